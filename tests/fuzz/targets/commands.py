"""Fuzz target ``commands``: what an edge receives on its commands consumer, through the edge's whole
path: the consumer (``edgehub.sync.commands``: decode, device and id checks, dead letters), the router
(``edge.uplink.commands``: epoch fence, one handler per kind) and the device's real store (SQLite).

Each input is one message: a ``Command`` built from the fuzzer's bytes (``protos``), often with an
envelope that passes the consumer's checks, maybe damaged on the wire. The device ``dev-1`` has a
running agent ``a1`` at epoch 2, an agent ``a2`` at epoch 0 and an agent ``a3`` that migrated away; it
is not enrolled (a migration command is refused: it cannot reach the hub).

Properties (an ``AssertionError`` or any exception is a crash):

- the consumer raises nothing, and acknowledges the message (a negative acknowledgement means a
  handler failed with an undeclared error: the command would come back for ever);
- a command rejected (dead-lettered) changes nothing on the device (store, drain flag, scheduler),
  but for the one documented effect of a refusal: a command carrying a newer epoch than the
  device's copy of its agent stands that copy down (MIGRATED).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import apsw
from atheris import FuzzedDataProvider

from edgehub.edge.agent.loop import new_agent
from edgehub.edge.datadir import DrainFlag
from edgehub.edge.store.sqlite import SqliteStore
from edgehub.edge.uplink.commands import CommandRouter, agent_of
from edgehub.protocol import subjects
from edgehub.protocol.v1 import agent_pb2, commands_pb2
from edgehub.sync.commands import CommandConsumer
from edgehub.sync.fake import FakeJetStream, FakeMsg
from tests.fuzz.protos import build, damaged

S = agent_pb2
DEVICE = "dev-1"
WORDS = [DEVICE, "dev-2", "a1", "a2", "a3", "a1/1", "a1/3", "a9", "cmd-1", "m-1", "g-0a0b0c0d0e0f/a"]
LOOP = asyncio.new_event_loop()
_SHM = Path("/dev/shm")
HOME = Path(tempfile.mkdtemp(prefix="edgehub-fuzz-commands-", dir=_SHM if _SHM.is_dir() else None))
"""In memory where there is /dev/shm: the store syncs every commit."""


class Agents:
    """The scheduler's side of the router, recorded."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.calls: list[tuple[str, str]] = []

    def submit(
        self,
        goal: str,
        *,
        agent_id: str | None = None,
        budget: object = None,
        task_id: str = "",
        tools: list[str] | None = None,
        trace_parent: str = "",
    ) -> str:
        assert agent_id is not None
        state = new_agent(agent_id, goal, budget, task_id, tools)  # type: ignore[arg-type]
        state.trace_parent = trace_parent  # as the scheduler keeps it
        self.store.create_agent(state)
        self.calls.append(("submit", agent_id))
        return agent_id

    async def stop_agent(self, agent_id: str, reason: str) -> agent_pb2.AgentState:
        self.calls.append(("stop", agent_id))
        return self.store.load_agent(agent_id)

    @contextlib.asynccontextmanager
    async def hold(self, agent_id: str) -> AsyncIterator[None]:
        self.calls.append(("hold", agent_id))
        yield

    def schedule(self) -> None:
        self.calls.append(("schedule", ""))


def _world() -> tuple[SqliteStore, apsw.Connection]:
    store = SqliteStore.open(HOME / "edge.db", device_id=DEVICE)
    for agent_id, epoch in (("a1", 2), ("a2", 0), ("a3", 1)):
        state = new_agent(agent_id, "inspect")
        state.epoch, state.status = epoch, S.AGENT_STATUS_RUNNING
        store.create_agent(state)
    store.mark_migrated("a3", "m-0", "dev-2")
    pristine = apsw.Connection(":memory:")
    with pristine.backup("main", store._conn, "main") as copy:
        copy.step()
    return store, pristine


STORE, PRISTINE = _world()
DRAIN = DrainFlag(HOME, DEVICE)


def _state() -> dict[str, object]:
    """Every table of the store, and the drain flag. Not ``store_meta``: its generation counts write
    transactions (the rollback watermark's), and the one refusal with an effect, a fence, writes one."""
    tables = STORE._rows(
        "SELECT name FROM sqlite_master WHERE type='table' AND sql NOT LIKE 'CREATE VIRTUAL%'"
    )
    names = sorted(
        n for (n,) in tables if not n.startswith(("episode_vectors", "episode_bits", "sqlite_", "store_meta"))
    )
    return {t: STORE._rows(f'SELECT * FROM "{t}" ORDER BY rowid') for t in names} | {"draining": DRAIN.on}


def _without(state: dict[str, object], agent_id: str) -> dict[str, object]:
    rows: list[tuple[object, ...]] = state["agents"]  # type: ignore[assignment]
    return state | {"agents": [r for r in rows if r[0] != agent_id]}


def _migrated() -> set[str]:
    return {a.agent_id for a in STORE.list_agents((S.AGENT_STATUS_MIGRATED,))}


def message(fdp: FuzzedDataProvider) -> FakeMsg:
    cmd = build(commands_pb2.Command, fdp, WORDS)
    if fdp.ConsumeBool():  # an envelope as the hub writes it: the fuzzing is in the body and the ids
        cmd.schema_version, cmd.device_id = 1, DEVICE
        cmd.command_id = cmd.command_id or "cmd-1"
        cmd.epoch = fdp.ConsumeIntInRange(0, 3)
    return FakeMsg(subjects.commands(DEVICE), damaged(cmd.SerializeToString(), fdp))


def _stood_down(data: bytes, migrated: set[str], epochs: dict[str, int]) -> str:
    """The agent a refused command stood down ('' for none): the one refusal with an effect
    (``CommandRouter.fence``), when the command's epoch is newer than the device's copy."""
    cmd = commands_pb2.Command.FromString(data)  # it was decoded: the consumer handed it over
    agent_id = agent_of(cmd)
    if _migrated() - migrated == {agent_id} and cmd.epoch > epochs[agent_id]:
        return agent_id
    return ""


async def run(msg: FakeMsg) -> None:
    with STORE._conn.backup("main", PRISTINE, "main") as copy:
        copy.step()
    DRAIN.set(False, "fuzz")
    agents = Agents(STORE)
    router = CommandRouter(STORE, agents, DRAIN, device_id=DEVICE, identity=None, keep_consolidated_days=0)
    js = FakeJetStream()
    consumer = CommandConsumer(js, DEVICE, router.apply)  # type: ignore[arg-type]
    migrated, epochs = _migrated(), {a.agent_id: a.epoch for a in STORE.list_agents()}
    before = _state()
    await consumer._one(msg)  # type: ignore[arg-type]
    assert msg.outcome == "ack", f"command {msg.outcome or 'not settled'}: a handler failed undeclared"
    if consumer.rejected:
        assert [p.subject for p in js.published] == [subjects.device_deadletter(DEVICE)]
        stood_down = _stood_down(msg.data, migrated, epochs) if _migrated() != migrated else ""
        assert _without(_state(), stood_down) == _without(before, stood_down), (
            "a rejected command changed the device"
        )
        assert all(call[0] == "hold" for call in agents.calls), agents.calls


def one_input(data: bytes) -> None:
    fdp = FuzzedDataProvider(data)
    LOOP.run_until_complete(run(message(fdp)))
