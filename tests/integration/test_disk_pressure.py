"""Disk pressure on an edge, on a small tmpfs of the test's own: a step that does not fit fails
cleanly (``StoreFull``), the agent pauses with the reason in the twin and then in its mind-log, the
store passes SQLite's check, and once there is space again the agent resumes by itself and finishes;
every event reaches a real nats-server's hub side exactly once."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import apsw
import pytest

from edgehub.edge.agent.loop import new_agent
from edgehub.edge.app import EdgeDaemon
from edgehub.edge.config import EdgeConfig
from edgehub.edge.errors import StoreFull
from edgehub.edge.store import SqliteStore
from edgehub.edge.store.sqlite.connection import check
from edgehub.llm.fake import FakeBrain
from edgehub.protocol.v1 import agent_pb2, events_pb2
from edgehub.sync import EventApplier, NatsServer
from tests.harness.nats import connect, nats_server  # noqa: F401 - fixture
from tests.harness.smallfs import fill, small_fs
from tests.harness.wait import eventually

S = agent_pb2
PAD = "x" * 6000
"""Each thought's padding (one "token" to the scripted brain): the mind-log, outbox and turns grow
by some 20 KB a step."""


def script(steps: int) -> object:
    calls = 0

    def next_action(_prompt: str) -> str:
        nonlocal calls
        calls += 1
        if calls > steps:
            return json.dumps({"thought": "done", "tool": "finish", "args": {"answer": "ok"}})
        args = {"path": f"n{calls}.txt", "content": str(calls)}
        return json.dumps({"thought": f"{PAD} {calls}", "tool": "write_file", "args": args})

    return next_action


def config(data_dir: Path, url: str, **store: float) -> EdgeConfig:
    return EdgeConfig.model_validate(
        {
            "device": {"id": "dev-full", "data_dir": str(data_dir)},
            "tools": {"load_entry_points": False},
            "hub": {"nats_url": url},
            "memory": {"replicate": False, "episodic": False},
            "agent": {"max_steps": 60, "max_tool_calls": 100},
            "store": {"resume_free_mb": 1.0} | store,
            "safety": {"stuck_steps": 100},  # the padded thoughts are alike on purpose
        }
    )


def quick_check(path: Path) -> list[str]:
    conn = apsw.Connection(str(path))  # reads only (read-only mode cannot open a WAL file alone)
    try:
        return check(conn)
    finally:
        conn.close()


def create_until_full(store: SqliteStore) -> None:
    for i in range(1000):
        store.create_agent(new_agent(f"agent-{i}", PAD * 20))


def test_a_write_that_does_not_fit_raises_store_full_and_commits_nothing(tmp_path: Path) -> None:
    with small_fs(tmp_path / "small", "4m") as fs:
        store = SqliteStore.open(fs / "edge.db", device_id="dev-full")
        store.create_agent(new_agent("agent-a", "goal"))
        filler = fill(fs, leave_bytes=64 * 1024)
        with pytest.raises(StoreFull) as full:
            create_until_full(store)
        assert full.value.retryable
        assert full.value.code == "RESOURCE_EXHAUSTED"
        created = {a.agent_id for a in store.list_agents()}
        filler.unlink()
        store.create_agent(new_agent("agent-after", "goal"))  # writable again once there is space
        assert "agent-after" in {a.agent_id for a in store.list_agents()} - created
        store.close()
        assert quick_check(fs / "edge.db") == []


async def test_an_agent_pauses_on_a_full_disk_and_resumes_by_itself_losing_nothing(
    tmp_path: Path,
    nats_server: NatsServer,  # noqa: F811
) -> None:
    hub_nc = await connect(nats_server, "hub")
    got: dict[int, events_pb2.EdgeEvent] = {}
    applied = 0

    async def apply(event: events_pb2.EdgeEvent) -> None:
        nonlocal applied
        applied += 1
        got[event.seq] = event

    stop = asyncio.Event()
    applier = asyncio.create_task(EventApplier(hub_nc.jetstream(), apply).run(stop))
    with small_fs(tmp_path / "small", "8m") as fs:
        cfg = config(fs / "edge", nats_server.url)
        async with EdgeDaemon(cfg, brain=FakeBrain(script(40))) as daemon:  # type: ignore[arg-type]
            pressure = daemon.parts.scheduler.pressure
            assert pressure is not None
            pressure.check_s = 0.1
            filler = fill(fs, leave_bytes=300 * 1024)
            runner = asyncio.create_task(daemon.run())
            agent_id = daemon.submit("write forty notes")
            await eventually(lambda: pressure.full, within=60, what="the disk to fill")
            assert "full" in daemon.report().paused_reason
            paused = daemon.store.load_agent(agent_id)
            assert paused.status == S.AGENT_STATUS_RUNNING  # its last checkpoint, not failed
            assert quick_check(cfg.store_path) == []

            filler.unlink()  # space returns
            await eventually(
                lambda: daemon.store.load_agent(agent_id).status == S.AGENT_STATUS_FINISHED,
                within=60,
                what=lambda: f"the agent to resume and finish: {daemon.store.load_agent(agent_id)}",
            )
            assert daemon.report().paused_reason == ""
            log = daemon.store.mind_log(agent_id)
            await eventually(lambda: daemon.store.outbox_depth() == 0, within=30, what="the outbox to drain")
            daemon.request_stop()
            await runner
        assert quick_check(cfg.store_path) == []
    await eventually(lambda: len(got) == len(log), within=30, what="every event at the hub")
    stop.set()
    await applier
    notes = [e for e in log if e.kind == S.STEP_KIND_WARNING and "paused" in e.detail]
    assert notes
    assert "file system is full" in notes[0].detail
    assert paused.step < log[-1].step  # it went on after the pause
    actions = [e.step for e in log if e.kind == S.STEP_KIND_ACTION]
    assert actions == list(range(actions[0], actions[0] + len(actions))), "a step lost or repeated"
    assert sorted(got) == list(range(1, len(log) + 1))  # none lost
    assert applied == len(log)  # each applied once
    assert [got[s].step.event_id for s in sorted(got)] == [e.event_id for e in log]
    await hub_nc.close()


async def test_with_a_pause_threshold_agents_pause_at_a_step_boundary_before_a_write_fails(
    tmp_path: Path,
    nats_server: NatsServer,  # noqa: F811
) -> None:
    with small_fs(tmp_path / "small", "8m") as fs:
        cfg = config(fs / "edge", nats_server.url, pause_free_mb=0.8, resume_free_mb=1.6)
        async with EdgeDaemon(cfg, brain=FakeBrain(script(40))) as daemon:  # type: ignore[arg-type]
            pressure = daemon.parts.scheduler.pressure
            assert pressure is not None
            pressure.check_s = 0.05
            filler = fill(fs, leave_bytes=1400 * 1024)
            runner = asyncio.create_task(daemon.run())
            agent_id = daemon.submit("write forty notes")
            await eventually(lambda: pressure.full, within=60, what="free space to fall under 0.8 MB")
            assert "nearly full" in daemon.report().paused_reason
            await eventually(
                lambda: agent_id in pressure.paused and not daemon.parts.scheduler.running,
                within=30,
                what="the agent to stop at its step boundary",
            )
            assert "nearly full" in pressure.reason  # no write failed (that would say "is full")
            assert daemon.store.load_agent(agent_id).status == S.AGENT_STATUS_RUNNING
            filler.unlink()
            await eventually(
                lambda: daemon.store.load_agent(agent_id).status == S.AGENT_STATUS_FINISHED,
                within=60,
                what=lambda: f"the agent to resume and finish: {daemon.store.load_agent(agent_id)}",
            )
            log = daemon.store.mind_log(agent_id)
            daemon.request_stop()
            await runner
        assert quick_check(cfg.store_path) == []
    notes = [e.detail for e in log if e.kind == S.STEP_KIND_WARNING and "paused" in e.detail]
    assert len(notes) == 1
    assert "nearly full" in notes[0]  # paused before any write failed, not by a full disk
