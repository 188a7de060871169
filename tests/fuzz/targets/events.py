"""Fuzz target ``events``: what devices publish on the events stream, through the hub's whole apply
path in process: the applier (``edgehub.sync.applier``: decode, subject and id checks, per-device
sequence, dead letters) and the router (``edgehub.hub.routing``: fence, agent registry, goal intake),
over an in-memory JetStream (``edgehub.sync.fake``).

The world: one running goal whose task ``a`` was dispatched to ``dev-a`` (its agent reserved to
``dev-a``), an agent ``agent-a1`` that ``dev-a`` started itself, and ``agent-x1`` of ``dev-x``, the
compromised device. Each input is a batch of one to three messages; each message a subject (an events
subject of ``dev-x``, of a new device, of ``dev-a``, or fuzzed text) and an ``EdgeEvent`` built from
the fuzzer's bytes (``protos``), often with an envelope that passes the applier's checks, maybe
damaged on the wire.

Properties (an ``AssertionError`` or any exception is a crash):

- ``handle_batch`` raises nothing (a raising batch is redelivered for ever: the hub stalls);
- every message is settled once: acknowledged or deferred;
- nothing but the dead letters is published;
- a batch the applier rejected whole changes nothing at all (not even the sequence record);
- a batch whose admitted events were all refused by the router changes no record but the sequence;
- events from devices other than ``dev-a`` never change a record of ``dev-a`` (its agents, its task).
"""

from __future__ import annotations

import asyncio
from collections import Counter

from atheris import FuzzedDataProvider
from prometheus_client import CollectorRegistry

from edgehub.hub.config import PlannerConfig
from edgehub.hub.fleet.agents import AgentRegistry
from edgehub.hub.fleet.rollouts import RolloutService
from edgehub.hub.goals import DeviceView
from edgehub.hub.goals.service import GoalService
from edgehub.hub.routing import EventRouter
from edgehub.protocol import subjects
from edgehub.protocol.v1 import agent_pb2, events_pb2, goals_pb2
from edgehub.sync.applier import EventApplier
from edgehub.sync.fake import FakeJetStream, FakeMsg
from edgehub.sync.streams import AGENTS, APPLIED, GOALS
from tests.fuzz.protos import build, damaged, text

S = agent_pb2
G = goals_pb2
OWNER, ATTACKER = "dev-a", "dev-x"
GOAL_ID = "g-0a0b0c0d0e0f"
SENDERS = (ATTACKER, "dev-new", OWNER)
FLEET = [
    DeviceView(device_id=OWNER, online=True, tools=frozenset({"run_command", "finish"}), max_concurrent=4)
]
LOOP = asyncio.new_event_loop()


class World:
    """The hub's state before each input (a snapshot of the fake) and the words the fuzzer picks ids from."""

    def __init__(self) -> None:
        self.js = FakeJetStream()
        self.goal_id = ""
        self.task_agent = ""
        self.words: list[str] = []
        self.start: FakeJetStream | None = None

    async def build(self) -> None:
        goals = _goals(self.js)
        plan = G.PlanDraft(
            tasks=[
                G.TaskDraft(id="a", goal="do a", estimate_tokens=100),
                G.TaskDraft(id="b", goal="do b", needs=["a"], estimate_tokens=100),
            ]
        )
        record = await goals.submit("inspect the line", by="op", plan=plan, goal_id=GOAL_ID)
        self.goal_id, self.task_agent = record.goal_id, record.tasks["a"].agent_id
        assert self.task_agent, record
        agents = AgentRegistry(self.js)
        for device, agent in ((OWNER, "agent-a1"), (ATTACKER, "agent-x1")):
            await agents.apply_batch([_step(device, agent, seq=1)])
        await goals.close()
        self.js.published.clear()
        self.start = self.js.snapshot()
        self.words = [
            *SENDERS, "agent-a1", "agent-x1", self.task_agent, self.goal_id,
            f"{self.goal_id}/a", f"{self.goal_id}/b", f"{self.goal_id}-b-1", "g-0123456789ab-a-1",
        ]  # fmt: skip


def _goals(js: FakeJetStream) -> GoalService:
    async def fleet() -> list[DeviceView]:
        return FLEET

    cfg = PlannerConfig(enabled=False)
    return GoalService(js, fleet, cfg, metrics=CollectorRegistry(), agents=AgentRegistry(js))  # type: ignore[arg-type]


def _step(device: str, agent: str, seq: int) -> events_pb2.EdgeEvent:
    event = events_pb2.EdgeEvent(
        schema_version=1, event_id=f"{agent}/{seq}", device_id=device, seq=seq, agent_id=agent
    )
    event.step.CopyFrom(
        S.StepEvent(event_id=f"{agent}/{seq}", agent_id=agent, step=seq, status=S.AGENT_STATUS_RUNNING)
    )
    return event


WORLD = World()


def message(fdp: FuzzedDataProvider) -> FakeMsg:
    """One message as a device could publish it (see the module docstring)."""
    event = build(events_pb2.EdgeEvent, fdp, WORLD.words)
    sender = fdp.PickValueInList(list(SENDERS))
    if fdp.ConsumeBool():  # an envelope as a daemon writes it: the fuzzing is in the body and the ids
        event.schema_version, event.device_id = 1, sender
        event.seq = fdp.ConsumeIntInRange(1, 4)
        event.agent_id = event.agent_id or "agent-x1"
    if fdp.ConsumeIntInRange(0, 7) == 0:
        subject = text(fdp, ["edgehub.ev.", "edgehub.ev.dev-x.", "%2E", "%"])
    else:
        subject = subjects.events(sender, event.agent_id or "agent-x1")
    return FakeMsg(subject, damaged(event.SerializeToString(), fdp))


def _owned(state: dict[str, dict[str, tuple[bytes, int]]]) -> tuple[object, ...]:
    """What belongs to ``dev-a``: its agents' records and the goal (all of whose tasks are its)."""
    agents = state.get(AGENTS.name, {})
    return tuple(agents.get(k) for k in ("agent-a1", WORLD.task_agent)), state.get(GOALS.name)


def _without_sequences(
    state: dict[str, dict[str, tuple[bytes, int]]],
) -> dict[str, dict[str, tuple[bytes, int]]]:
    return {name: entries for name, entries in state.items() if name != APPLIED.name}


async def run(msgs: list[FakeMsg]) -> None:
    js = WORLD.js
    assert WORLD.start is not None
    js.restore(WORLD.start)
    goals = _goals(js)
    goals.store.agents[WORLD.task_agent] = (WORLD.goal_id, "a")  # its first step is awaited
    router = EventRouter(_Services(js, goals))  # type: ignore[arg-type]
    applier = EventApplier(js, apply=_never, apply_batch=router.apply_batch, gap_wait_s=0.0)  # type: ignore[arg-type]
    before = js.state()
    await applier.handle_batch(msgs)
    after = js.state()
    outcomes = Counter(m.outcome for m in msgs)
    assert not outcomes[""], f"a message left unsettled: {outcomes}"
    dlq = subjects.deadletter("events")
    assert all(p.subject == dlq for p in js.published), [p.subject for p in js.published]
    stats = applier.stats
    if stats.dead_lettered == len(msgs):
        assert after == before, "a batch the applier rejected changed the state"
    if stats.applied and router.fenced == stats.applied:
        assert _without_sequences(after) == _without_sequences(before), "refused events changed a record"
    senders = {subjects.parse_events(m.subject)[0] for m in msgs if _is_events_subject(m.subject)}
    if OWNER not in senders:
        assert _owned(after) == _owned(before), "another device changed a record of dev-a"
    await goals.close()


def _is_events_subject(subject: str) -> bool:
    try:
        subjects.parse_events(subject)
    except ValueError:
        return False
    return True


class _Services:
    """What the router reads of ``HubServices``: the stream, the agents, the goals, no graph."""

    def __init__(self, js: FakeJetStream, goals: GoalService) -> None:
        self.js = js
        self.agents = AgentRegistry(js)  # type: ignore[arg-type]
        self.goals = goals
        self.knowledge = None
        self.rollouts = RolloutService(js, None, _nothing, _nothing, None)  # type: ignore[arg-type]


async def _nothing() -> list[object]:
    return []


async def _never(event: events_pb2.EdgeEvent) -> None:
    raise AssertionError("apply_batch is given, so apply is never called")


def one_input(data: bytes) -> None:
    if WORLD.start is None:
        LOOP.run_until_complete(WORLD.build())
    fdp = FuzzedDataProvider(data)
    msgs = [message(fdp) for _ in range(fdp.ConsumeIntInRange(1, 3))]
    LOOP.run_until_complete(run(msgs))
