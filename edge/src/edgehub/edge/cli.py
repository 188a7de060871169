"""``edgehub edge ...`` (the daemon) and ``edgehub agent ...`` (agents on this device)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from edgehub.protocol.v1 import agent_pb2

from .agent.loop import new_agent
from .app import DaemonLock, EdgeDaemon
from .config import EdgeConfig, load_config
from .errors import EdgeError
from .identity import DeviceIdentity, enroll
from .safety.build import build_scrubber
from .store.sqlite import SqliteStore
from .trace import dumps, event_dict, print_event, print_summary, state_dict, status_name

S = agent_pb2
console = Console()
err = Console(stderr=True, soft_wrap=True)

edge_app = typer.Typer(help="The edge daemon: runs agents on this device.", no_args_is_help=True)
agent_app = typer.Typer(help="Agents on this device: run a goal, list, trace.", no_args_is_help=True)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="edge.toml (default: built-in defaults + environment)")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output (JSON lines).")]


def load(path: Path | None) -> EdgeConfig:
    try:
        return load_config(path, profile=hardware_settings())
    except EdgeError as exc:
        fail(exc)


def hardware_settings() -> dict[str, dict[str, Any]]:
    """This machine's hardware profile's settings (``edgehub hardware detect``), in edge.toml's shape;
    none when it cannot be read (a warning says why: the built-in defaults apply)."""
    try:
        from edgehub.hardware import this_machine

        return this_machine().as_edge_config()
    except Exception as exc:  # a broken profile must not stop the daemon
        err.print(f"[yellow]warning:[/] hardware profile not applied: {exc}")
        return {}


def fail(exc: BaseException | str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(code)


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(message)s", handlers=[RichHandler(console=err, show_path=False)]
    )


@edge_app.command("run")
def edge_run(
    config: ConfigOpt = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
    until_idle: Annotated[
        bool, typer.Option("--until-idle", help="Exit once no agent is left to run (batch mode).")
    ] = False,
) -> None:
    """Run the edge daemon until SIGTERM/SIGINT; running agents checkpoint and stop cleanly."""
    cfg = load(config)
    _logging(log_level)

    async def main() -> None:
        async with EdgeDaemon(cfg, config_path=config) as daemon:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, daemon.request_stop)
            await daemon.run(until_idle=until_idle)

    try:
        asyncio.run(main())
    except EdgeError as exc:
        fail(exc)


@edge_app.command("enroll")
def edge_enroll(
    token: Annotated[str, typer.Option("--token", envvar="EDGEHUB_ENROLL_TOKEN", help="One-time token.")],
    api: Annotated[str, typer.Option("--api", envvar="EDGEHUB_API", help="The hub's API address.")],
    ca: Annotated[
        Path, typer.Option("--ca", envvar="EDGEHUB_CA", help="The hub's CA certificate (PEM), to verify it.")
    ],
    config: ConfigOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing identity.")] = False,
) -> None:
    """Enroll this device with the hub: trade a one-time token (`edgehub devices enroll-token`) for
    its own NATS credentials and client certificate, kept in <data_dir>/identity."""
    cfg = load(config)
    try:
        existing = DeviceIdentity.load(cfg.identity_dir, cfg.device.id)
    except EdgeError:
        existing = None  # unreadable: enrolling again is the fix
    if existing is not None and not force:
        fail(f"{cfg.device.id} is already enrolled ({cfg.identity_dir}); --force to enroll again")
    try:
        ca_pem = ca.read_bytes()
    except OSError as exc:
        fail(f"cannot read the CA certificate {ca}: {exc.strerror}")
    try:
        identity = enroll(cfg.identity_dir, cfg.device.id, api, token, ca_pem)
    except EdgeError as exc:
        fail(exc)
    urls = ", ".join(identity.nats_urls) or "(none: set [hub] nats_url)"
    console.print(f"enrolled {identity.device_id}: credentials in {identity.folder}; NATS {urls}")


@edge_app.command("config")
def edgeload(config: ConfigOpt = None) -> None:
    """Print the effective configuration (file + environment + defaults) as JSON."""
    console.print_json(load(config).model_dump_json())


@edge_app.command("doctor")
def edge_doctor(config: ConfigOpt = None) -> None:
    """Check what this device needs (model, bubblewrap, CRIU, the hub) and how to fix what is missing.

    Exit status: 0 when everything the configuration requires is there, 1 otherwise."""
    from .doctor import diagnose

    findings = diagnose(load(config))
    table = Table("check", "status", "found", "fix")
    for f in findings:
        missing = "[red]MISSING[/]" if f.required else "[yellow]missing (optional)[/]"
        status = "[green]OK[/]" if f.ok else missing
        table.add_row(f.name, status, f.detail, f.fix)
    console.print(table)
    if any(f.required and not f.ok for f in findings):
        raise typer.Exit(1)


def open_store(cfg: EdgeConfig) -> SqliteStore:
    try:
        return SqliteStore.open(cfg.store_path, device_id=cfg.device.id, outgoing=build_scrubber(cfg))
    except EdgeError as exc:
        fail(exc)


def _follow(store: SqliteStore, agent_id: str, as_json: bool, seen: int) -> int:
    events = store.mind_log(agent_id, limit=100_000)
    for event in events[seen:]:
        if as_json:
            print(dumps({"event": event_dict(event)}), flush=True)
        else:
            print_event(console, event)
    return len(events)


def _finish(store: SqliteStore, agent_id: str, as_json: bool) -> None:
    state = store.load_agent(agent_id)
    if as_json:
        print(dumps({"agent": state_dict(state)}), flush=True)
    else:
        print_summary(console, state)
    if state.status == S.AGENT_STATUS_AWAITING_APPROVAL:
        key = f"{state.agent_id}/{state.step}"
        err.print(f"waiting for an operator: edgehub approvals decide {key} --approve|--deny --by NAME")
        raise typer.Exit(3)
    if state.status != S.AGENT_STATUS_FINISHED:
        raise typer.Exit(1)


async def _run_in_process(
    cfg: EdgeConfig, config: Path | None, goal: str, budget: agent_pb2.Budget, as_json: bool
) -> str:
    async with EdgeDaemon(cfg, config_path=config) as daemon:
        assert daemon.store is not None
        agent_id = daemon.submit(goal, budget=budget)
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


@agent_app.command("run")
def agent_run(
    goal: Annotated[str, typer.Option("--goal", "-g", help="What the agent should achieve.")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    max_steps: Annotated[int, typer.Option(help="Step budget (0: config default).")] = 0,
) -> None:
    """Run one agent to completion and print its trace.

    Uses the local daemon when one is running on the data dir; otherwise runs the agent in-process.
    Exit status: 0 finished, 1 failed or stopped, 2 usage/config error, 3 paused for an approval.
    """
    cfg = load(config)
    budget = S.Budget(max_steps=max_steps)
    if not as_json:
        _logging("warning")
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
def agent_trace(agent_id: str, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Show the mind-log of an agent: thoughts, actions, observations, tokens, timings."""
    store = open_store(load(config))
    try:
        state = store.load_agent(agent_id)
    except EdgeError as exc:
        fail(exc, 1)
    _follow(store, agent_id, as_json, 0)
    if as_json:
        print(dumps({"agent": state_dict(state)}))
    else:
        print_summary(console, state)


@agent_app.command("list")
def agent_list(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """List the agents on this device."""
    store = open_store(load(config))
    states = store.list_agents()
    if as_json:
        for s in states:
            print(dumps(state_dict(s)))
        return
    table = Table("agent", "status", "steps", "goal", "answer / reason")
    for s in states:
        table.add_row(
            s.agent_id, status_name(s.status), str(s.usage.steps), s.goal[:60], s.answer or s.failure_reason
        )
    console.print(table)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(edge_app())
