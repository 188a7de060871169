"""The edge's command router: one handler per command kind, epoch fencing before any of them, and a
clear refusal (dead letter) for what it cannot apply."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from edgehub.edge.agent.loop import new_agent
from edgehub.edge.datadir import DrainFlag
from edgehub.edge.store.sqlite import SqliteStore
from edgehub.edge.uplink.commands import CommandRouter
from edgehub.protocol.v1 import agent_pb2, commands_pb2
from edgehub.sync.errors import MessageRejected

S = agent_pb2


class Agents:
    """The scheduler's side, recorded."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.held: list[str] = []
        self.stopped: list[tuple[str, str]] = []

    def submit(
        self,
        goal: str,
        *,
        agent_id: str | None = None,
        budget: agent_pb2.Budget | None = None,
        task_id: str = "",
        tools: list[str] | None = None,
        trace_parent: str = "",
    ) -> str:
        assert agent_id is not None
        state = new_agent(agent_id, goal, budget, task_id, tools)
        state.trace_parent = trace_parent
        self.store.create_agent(state)
        return agent_id

    async def stop_agent(self, agent_id: str, reason: str) -> agent_pb2.AgentState:
        self.stopped.append((agent_id, reason))
        return self.store.load_agent(agent_id)

    @contextlib.asynccontextmanager
    async def hold(self, agent_id: str) -> AsyncIterator[None]:
        self.held.append(agent_id)
        yield

    def schedule(self) -> None:
        pass


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore.open(tmp_path / "edge.db", device_id="dev-1")
    yield s
    s.close()


def router(store: SqliteStore, tmp_path: Path) -> tuple[CommandRouter, Agents]:
    agents = Agents(store)
    drain = DrainFlag(tmp_path, "dev-1")
    return CommandRouter(
        store, agents, drain, device_id="dev-1", identity=None, keep_consolidated_days=0
    ), agents


def command(epoch: int = 0, **body: object) -> commands_pb2.Command:
    return commands_pb2.Command(command_id="cmd-1", device_id="dev-1", epoch=epoch, **body)  # type: ignore[arg-type]


def with_agent(store: SqliteStore, agent_id: str = "a1", epoch: int = 0) -> None:
    state = new_agent(agent_id, "g")
    state.epoch = epoch
    store.create_agent(state)


def test_every_command_kind_has_a_handler(store: SqliteStore, tmp_path: Path) -> None:
    kinds = {f.name for f in commands_pb2.Command.DESCRIPTOR.oneofs_by_name["body"].fields}
    kinds -= {"use_model"}  # issue 21 part 2 (model delivery) handles it; until then it is dead-lettered
    assert set(router(store, tmp_path)[0].handlers) == kinds


async def test_a_command_without_a_kind_it_knows_is_refused_with_the_reason(
    store: SqliteStore, tmp_path: Path
) -> None:
    r, _ = router(store, tmp_path)
    with pytest.raises(MessageRejected, match=r"unknown command \(empty\); this daemon is "):
        await r.apply(command())
    del r.handlers["drain"]  # a kind this daemon would not know
    with pytest.raises(MessageRejected, match="unknown command drain"):
        await r.apply(command(drain=commands_pb2.Drain(reason="x")))


async def test_start_agent_creates_it_once_and_is_refused_while_draining(
    store: SqliteStore, tmp_path: Path
) -> None:
    r, _ = router(store, tmp_path)
    start = commands_pb2.StartAgent(agent_id="a1", goal="g", task_id="t1")
    await r.apply(command(start_agent=start))
    await r.apply(command(start_agent=start))  # delivered again: nothing changes
    assert [(a.agent_id, a.task_id, a.status) for a in store.list_agents()] == [
        ("a1", "t1", S.AGENT_STATUS_PENDING)
    ]
    await r.apply(command(drain=commands_pb2.Drain(reason="maintenance")))
    assert r.draining
    with pytest.raises(MessageRejected, match="draining: a2 not started"):
        await r.apply(command(start_agent=commands_pb2.StartAgent(agent_id="a2", goal="g")))
    await r.apply(command(drain=commands_pb2.Drain(resume=True, reason="done")))
    await r.apply(command(start_agent=commands_pb2.StartAgent(agent_id="a2", goal="g")))
    assert store.has_agent("a2")


async def test_a_stale_epoch_is_refused_and_a_newer_one_stands_this_copy_down(
    store: SqliteStore, tmp_path: Path
) -> None:
    r, agents = router(store, tmp_path)
    with_agent(store, "a1", epoch=2)
    stop = commands_pb2.StopAgent(agent_id="a1", reason="r")
    with pytest.raises(MessageRejected, match="stale command for a1: epoch 1, this device has 2"):
        await r.apply(command(epoch=1, stop_agent=stop))
    assert agents.stopped == []
    await r.apply(command(epoch=2, stop_agent=stop))
    assert agents.stopped == [("a1", "r")]
    with pytest.raises(MessageRejected, match="stale; stood down"):
        await r.apply(command(epoch=3, stop_agent=stop))
    assert agents.held == ["a1"]
    assert store.load_agent("a1").status == S.AGENT_STATUS_MIGRATED
    with pytest.raises(MessageRejected, match="agent a1 left this device"):  # only its migration's commands
        await r.apply(command(epoch=3, stop_agent=stop))


async def test_stopping_an_unknown_agent_changes_nothing(store: SqliteStore, tmp_path: Path) -> None:
    r, agents = router(store, tmp_path)
    await r.apply(command(stop_agent=commands_pb2.StopAgent(agent_id="nobody")))
    assert agents.stopped == []
