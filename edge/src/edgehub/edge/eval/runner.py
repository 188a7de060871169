"""Running a suite: each goal on a fresh device of its own, through the real edge daemon.

Every run gets a new data dir (store, L3, workspaces) and the same loaded model: the goal's files are
put into the agent's workspace, earlier agents' memories are seeded into L3 (or earlier goals really
run first), the hub's knowledge is placed in the device's knowledge cache (the eval device is offline,
so the ``knowledge`` tool answers from it as an offline device would), and the daemon runs the agent
to its end: real policy, real bubblewrap sandbox, real SQLite, the real model. Then the workspace, the
mind-log, the notes and the final state are judged by the goal's checks.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from edgehub.cli.config import merge as merge_config
from edgehub.llm import Brain
from edgehub.protocol.v1 import agent_pb2, knowledge_pb2

from ..app import EdgeDaemon
from ..config import EdgeConfig
from ..jsontypes import JsonObject
from ..uplink.knowledge import cache_key
from .checks import Outcome, category, judge, snapshot
from .report import GoalRun, Report
from .suite import Goal, Suite

S = agent_pb2
K = knowledge_pb2
log = logging.getLogger("edgehub.edge.eval")
EARLIER_AGENT = "earlier-agent"
"""Whose memories a goal's ``memories`` are (an agent that ran on the device before)."""
GOAL_TIMEOUT_S = 600.0


def _closed_port() -> int:
    """A local port nothing listens on: the eval device's "hub", so it is offline from the start."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How to run a suite."""

    base: EdgeConfig = field(default_factory=EdgeConfig)
    """The device configuration every run starts from (an operator's edge.toml, or the defaults)."""
    overrides: dict[str, JsonObject] = field(default_factory=dict)
    """Settings changed for this evaluation (``{"agent": {"plan": False}}``): the levers compared."""
    repeat: int = 1
    workdir: Path | None = None
    """Where the runs' data dirs go (kept); None: a temporary folder, removed afterwards."""
    timeout_s: float = GOAL_TIMEOUT_S
    label: str = ""

    def config(self, data_dir: Path, goal: Goal, max_steps: int) -> EdgeConfig:
        data = merge_config(self.base.model_dump(exclude_unset=True), self.overrides)
        per_run: JsonObject = {
            "device": {"id": "eval", "data_dir": str(data_dir)},
            "agent": {"max_steps": goal.max_steps or max_steps, "max_concurrent": 1},
            "metrics": {"port": None},
            "tracing": {"otlp_endpoint": None},
            "snapshot": {"enabled": False},
            "memory": {"replicate": False},
            "hub": {"nats_url": f"nats://127.0.0.1:{_closed_port()}" if goal.knowledge else None},
        }
        return EdgeConfig.model_validate(merge_config(data, per_run))


def _fact(fact: tuple[str, str, str]) -> knowledge_pb2.KnowledgeFact:
    subject, predicate, obj = fact
    return K.KnowledgeFact(subject=subject, predicate=predicate, object=obj, source="hub")


def seed_knowledge(daemon: EdgeDaemon, goal: Goal) -> None:
    """The hub's earlier answers about the goal's entities, in the device's knowledge cache."""
    for known in goal.knowledge:
        name, _, ident = known.entity.partition(" (")
        answer = K.KnowledgeAnswer(
            status=K.KnowledgeAnswer.STATUS_OK,
            entity_name=name,
            entity_id=ident.rstrip(")") or name,
            facts=[_fact(f) for f in known.facts],
        )
        for about in known.about:
            daemon.store.cache_knowledge(cache_key(about), answer.SerializeToString(), time.time())


async def seed_memories(daemon: EdgeDaemon, goal: Goal) -> None:
    """An earlier agent's memories in L3 (nothing when L3 is off: the goal then has to do without)."""
    if daemon.indexer is None:
        return
    for i, memory in enumerate(goal.memories):
        await daemon.indexer.memory.remember(EARLIER_AGENT, memory.text, memory.importance, i)


def _tool_trail(events: list[agent_pb2.StepEvent]) -> list[str]:
    trail = []
    for e in events:
        if e.kind == S.STEP_KIND_ACTION:
            name = e.action.tool or "invalid"
            trail.append(name if e.observation.ok else f"{name}!")
    return trail


def _verified(state: agent_pb2.AgentState) -> str:
    if state.status != S.AGENT_STATUS_FINISHED:
        return ""
    name = S.Verification.Name(state.verification).removeprefix("VERIFICATION_").lower()
    return "" if name == "unspecified" else name


def goal_run(goal: Goal, repeat: int, outcome: Outcome, wall_s: float) -> GoalRun:
    """The record of one judged run."""
    verdicts = judge(goal, outcome)
    state = outcome.state
    u = state.usage
    return GoalRun(
        goal_id=goal.id,
        tier=goal.tier,
        repeat=repeat,
        success=all(v.passed for v in verdicts),
        category=category(goal, outcome, verdicts),
        status=S.AgentStatus.Name(state.status).removeprefix("AGENT_STATUS_").lower(),
        failure_reason=state.failure_reason,
        answer=state.answer[:300],
        verified=_verified(state),
        steps=u.steps,
        tokens=u.evaluated_tokens + u.completion_tokens,
        wall_s=round(wall_s, 2),
        tools=_tool_trail(outcome.events),
        verdicts=verdicts,
    )


class EvalRunner:
    """Runs goals of a suite on one loaded model; ``brain`` is shared by every run."""

    def __init__(self, suite: Suite, options: RunOptions, brain: Brain) -> None:
        self.suite = suite
        self.options = options
        self.brain = brain

    @contextmanager
    def _workdir(self) -> Iterator[Path]:
        if self.options.workdir is not None:
            self.options.workdir.mkdir(parents=True, exist_ok=True)
            yield self.options.workdir
            return
        folder = Path(tempfile.mkdtemp(prefix="edgehub-eval-"))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    async def run(
        self, goals: list[Goal], *, on_run: Callable[[GoalRun], None] | None = None
    ) -> list[GoalRun]:
        runs = []
        with self._workdir() as root:
            for repeat in range(self.options.repeat):
                for goal in goals:
                    run = await self.run_goal(goal, repeat, root / f"{goal.id}-{repeat}")
                    runs.append(run)
                    if on_run is not None:
                        on_run(run)
        return runs

    async def run_goal(self, goal: Goal, repeat: int, data_dir: Path) -> GoalRun:
        shutil.rmtree(data_dir, ignore_errors=True)
        cfg = self.options.config(data_dir, goal, self.suite.max_steps)
        started = time.perf_counter()
        async with EdgeDaemon(cfg, brain=self.brain) as daemon:
            seed_knowledge(daemon, goal)
            await seed_memories(daemon, goal)
            for earlier in goal.before:
                daemon.submit(earlier)
                await self._until_idle(daemon)
            started = time.perf_counter()
            agent_id = daemon.submit(goal.goal)
            workspace = cfg.workspaces / agent_id
            for rel, text in goal.files.items():
                (workspace / rel).parent.mkdir(parents=True, exist_ok=True)
                (workspace / rel).write_text(text)
            await self._until_idle(daemon)
            wall = time.perf_counter() - started
            outcome = Outcome(
                state=daemon.store.load_agent(agent_id),
                events=daemon.store.mind_log(agent_id, limit=100_000),
                files_before=dict(goal.files),
                files_after=snapshot(workspace),
                notes=dict(daemon.store.search_notes(agent_id, "", limit=10_000)),
            )
        return goal_run(goal, repeat, outcome, wall)

    async def _until_idle(self, daemon: EdgeDaemon) -> None:
        try:
            await asyncio.wait_for(daemon.run(until_idle=True), self.options.timeout_s)
        except TimeoutError:  # the agent is judged as it stands; its state says it did not end
            log.warning("a goal did not end within %.0f s", self.options.timeout_s)


def make_report(
    suite: Suite,
    options: RunOptions,
    runs: list[GoalRun],
    *,
    model: str,
    prompt_format: str,
    machine: str,
    commit: str = "",
) -> Report:
    return Report(
        suite=suite.name,
        revision=suite.revision,
        model=model,
        prompt_format=prompt_format,
        settings=dict(options.overrides),
        machine=machine,
        runs=runs,
        label=options.label,
        commit=commit,
    )
