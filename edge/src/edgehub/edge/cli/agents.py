"""``edgehub agent ...``: run a goal on this device, list its agents, show an agent's trace."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgehub.cli.common import ConfigOpt, ExitCode, JsonOpt, console, err, exit_with, fail, setup_logging
from edgehub.llm import logs
from edgehub.protocol.v1 import agent_pb2

from ..agent.goal import check_goal, read_goal
from ..agent.loop import new_agent
from ..app import EdgeDaemon
from ..config import EdgeConfig
from ..datadir import DaemonLock
from ..errors import AgentNotFound, EdgeError
from ..store.base import EdgeStore
from .areas import AGENT
from .common import AgentIdArg, load, open_store, read_store
from .render import dumps, event_dict, print_event, print_summary, state_dict, status_name

S = agent_pb2
agent_app = typer.Typer(help=AGENT.help, no_args_is_help=True)


def _follow(store: EdgeStore, agent_id: str, as_json: bool, seen: int) -> int:
    events = store.mind_log(agent_id, limit=100_000)
    for event in events[seen:]:
        if as_json:
            print(dumps({"event": event_dict(event)}), flush=True)
        else:
            print_event(console, event)
    return len(events)


def _finish(store: EdgeStore, agent_id: str, as_json: bool) -> None:
    state = store.load_agent(agent_id)
    if as_json:
        print(dumps({"agent": state_dict(state)}), flush=True)
    else:
        print_summary(console, state)
    if state.status == S.AGENT_STATUS_AWAITING_APPROVAL:
        key = f"{state.agent_id}/{state.step}"
        err.print(f"waiting for an operator: edgehub approvals decide {key} --approve|--deny --by NAME")
        exit_with(ExitCode.WAITING)
    if state.status != S.AGENT_STATUS_FINISHED:
        exit_with(ExitCode.FAILED)


async def _run_in_process(
    cfg: EdgeConfig, config: Path | None, goal: str, budget: agent_pb2.Budget, as_json: bool
) -> str:
    async with EdgeDaemon(cfg, config_path=config) as daemon:
        agent_id = f"agent-{uuid.uuid4().hex[:12]}"
        too_big = daemon.loop.goal_problem(new_agent(agent_id, goal, budget))
        if too_big is not None:  # said now, as a usage error, rather than as a failed agent
            raise too_big
        daemon.submit(goal, agent_id=agent_id, budget=budget)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, daemon.request_stop)
        runner = asyncio.create_task(daemon.run(until_idle=True))
        seen = 0
        while not runner.done():
            seen = _follow(daemon.store, agent_id, as_json, seen)
            await asyncio.wait({runner}, timeout=0.2)
        runner.result()
        _follow(daemon.store, agent_id, as_json, seen)
        return agent_id


def _goal(goal: str | None, goal_file: Path | None) -> str:
    """The goal from ``--goal`` (``-``: standard input) or ``--goal-file``, checked (``agent/goal.py``)."""
    if (goal is None) == (goal_file is None):
        given = "both --goal and --goal-file" if goal is not None else "no goal"
        fail(f"{given}: give one of --goal TEXT, --goal - (standard input) or --goal-file PATH")
    try:
        if goal_file is not None:
            return read_goal(goal_file)
        assert goal is not None
        return read_goal(None) if goal == "-" else check_goal(goal)
    except EdgeError as exc:
        fail(exc)


@agent_app.command("run")
def agent_run(
    goal: Annotated[
        str | None,
        typer.Option("--goal", "-g", help="What the agent should achieve; - reads it from standard input."),
    ] = None,
    goal_file: Annotated[
        Path | None,
        typer.Option("--goal-file", help="Read the goal from this file (UTF-8 text).", readable=False),
    ] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    max_steps: Annotated[int, typer.Option(help="Step budget (0: config default).")] = 0,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also print the model's own log (llama.cpp) on stderr.")
    ] = False,
) -> None:
    """Run one agent to completion and print its trace.

    The goal: 1 to 4,000 characters (surrounding whitespace stripped) that, with the prompt, fit the
    model's context. Uses the local daemon when one is running on the data dir; otherwise runs the agent
    in-process. Exit status: 0 finished, 1 failed or stopped, 2 usage/config error (a goal that is empty,
    too long or does not fit the context too), 3 paused for an approval.
    """
    goal = _goal(goal, goal_file)
    cfg = load(config)
    budget = S.Budget(max_steps=max_steps)
    if verbose:
        logs.show()
    if not as_json:
        setup_logging("warning")
    if DaemonLock.held(cfg.device.data_dir):
        store = open_store(cfg)
        agent_id = f"agent-{uuid.uuid4().hex[:12]}"
        state = new_agent(agent_id, goal, budget)
        store.create_agent(state)
        seen = 0
        while store.load_agent(agent_id).status in (S.AGENT_STATUS_PENDING, S.AGENT_STATUS_RUNNING):
            seen = _follow(store, agent_id, as_json, seen)
            time.sleep(0.2)
        _follow(store, agent_id, as_json, seen)
    else:
        try:
            agent_id = asyncio.run(_run_in_process(cfg, config, goal, budget, as_json))
        except EdgeError as exc:
            fail(exc)
        store = open_store(cfg)
    _finish(store, agent_id, as_json)


@agent_app.command("trace")
def agent_trace(agent_id: AgentIdArg, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Show the mind-log of an agent: thoughts, actions, observations, tokens, timings.

    Read-only (creates nothing). Exit status: 0 shown, 1 no such agent on this device, 2 usage/config
    error."""
    store = read_store(load(config))
    try:
        if store is None:
            raise AgentNotFound(agent_id)
        state = store.load_agent(agent_id)
    except EdgeError as exc:
        fail(exc, ExitCode.FAILED)
    _follow(store, agent_id, as_json, 0)
    if as_json:
        print(dumps({"agent": state_dict(state)}))
    else:
        print_summary(console, state)


@agent_app.command("list")
def agent_list(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """List the agents on this device (none: nothing on stdout, exit status 0). Read-only: creates
    nothing."""
    store = read_store(load(config))
    states = store.list_agents() if store is not None else []
    if as_json:
        for s in states:
            print(dumps(state_dict(s)))
        return
    if not states:
        err.print("no agents on this device")
        return
    held = set(store.held_agents()) if store is not None and store.rolled_back is not None else set()
    table = Table("agent", "status", "steps", "goal", "answer / reason")
    for s in states:
        status = status_name(s.status) + (" (held: store rolled back)" if s.agent_id in held else "")
        table.add_row(s.agent_id, status, str(s.usage.steps), s.goal[:60], s.answer or s.failure_reason)
    console.print(table)
