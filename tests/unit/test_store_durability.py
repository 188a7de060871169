"""The store's defences against going back in time, on the real SQLite store and its own files: the
watermark beside it, the refusal to write behind it, accepting a loss, the bounded WAL and its timer."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from edgehub.edge.agent.loop import new_agent
from edgehub.edge.errors import StoreError, StoreRolledBack
from edgehub.edge.store import SqliteStore
from edgehub.edge.store.sqlite.connection import WAL_AUTOCHECKPOINT_PAGES
from edgehub.edge.store.upkeep import wal_checkpoints
from edgehub.protocol.v1 import agent_pb2

S = agent_pb2
FILES = ("edge.db", "edge.db-wal")


def _open(folder: Path) -> SqliteStore:
    return SqliteStore.open(folder / "edge.db", device_id="dev-1")


def _step(store: SqliteStore, agent_id: str, payload: str = "") -> int:
    state = store.load_agent(agent_id)
    step = state.step
    state.step, state.status = step + 1, S.AGENT_STATUS_RUNNING
    event = S.StepEvent(event_id=f"{agent_id}/0/{step}/action", agent_id=agent_id, step=step, kind=1)
    turns = [S.Turn(step=step, role="action", text=payload or f"a{step}", tokens=1)]
    return store.checkpoint(state, event, turns)


def _copy(src: Path, dst: Path) -> None:
    """The database files as they are now (a backup, or what a lost WAL tail leaves)."""
    dst.mkdir(exist_ok=True)
    for name in FILES:
        if (src / name).exists():
            shutil.copy(src / name, dst / name)


def test_each_step_moves_the_watermark_beside_the_file(tmp_path: Path) -> None:
    store = _open(tmp_path)
    store.create_agent(new_agent("a1", "goal"))
    marks = []
    for _ in range(3):
        _step(store, "a1")
        marks.append(store.watermark.read())
    assert [m.generation for m in marks if m] == [
        store.generation - 2,
        store.generation - 1,
        store.generation,
    ]
    store.outbox_ack(2)
    assert store.watermark.read() is not None
    assert store.watermark.read().acked_seq == 2
    raw = json.loads((tmp_path / "edge.db.watermark").read_text())
    assert raw["version"] == 1
    store.close()


def test_an_old_copy_put_back_is_caught_and_refuses_every_write(tmp_path: Path) -> None:
    store = _open(tmp_path)
    store.create_agent(new_agent("a1", "goal"))
    _step(store, "a1")
    _copy(tmp_path, tmp_path / "old")  # read while open: the WAL holds the step
    _step(store, "a1")
    _step(store, "a1")
    store.outbox_ack(3)
    store.close()
    for name in FILES:
        (tmp_path / name).unlink(missing_ok=True)
        if (tmp_path / "old" / name).exists():
            shutil.copy(tmp_path / "old" / name, tmp_path / name)

    back = _open(tmp_path)
    assert back.rollback is not None
    assert back.rollback.found < back.rollback.recorded
    assert back.rollback.acked_seq == 3
    assert back.rollback.outbox_seq == 1
    assert back.load_agent("a1").step == 1  # readable, as it is
    with pytest.raises(StoreRolledBack, match=r"rolled back.*--accept-rollback"):
        _step(back, "a1")
    with pytest.raises(StoreRolledBack):
        back.create_agent(new_agent("a2", "goal"))
    back.close()
    again = _open(tmp_path)  # refused writes moved nothing: still caught
    assert again.rollback is not None
    again.close()


def test_accepting_a_rollback_goes_on_after_what_the_hub_acknowledged(tmp_path: Path) -> None:
    store = _open(tmp_path)
    store.create_agent(new_agent("a1", "goal"))
    _step(store, "a1")
    _copy(tmp_path, tmp_path / "old")
    for _ in range(4):
        _step(store, "a1")
    store.outbox_ack(4)  # the hub side has seqs 1..4; 5 was never acknowledged
    store.close()
    for name in FILES:
        (tmp_path / name).unlink(missing_ok=True)
        if (tmp_path / "old" / name).exists():
            shutil.copy(tmp_path / "old" / name, tmp_path / name)

    back = _open(tmp_path)
    lost = back.rollback
    assert lost is not None
    accepted = back.accept_rollback("tester")
    assert accepted.agents == ("a1",)
    assert accepted.by == "tester"
    assert back.rolled_back is None
    assert back.outbox_pending() == []  # seq 1 is the hub's already; the placeholder at 4 is never sent
    assert _step(back, "a1") == 5  # not 2: the hub would take 2 for a resend of what it applied
    assert [e.seq for e in back.outbox_pending()] == [5]
    assert back.outbox_depth() == 1
    mark = back.watermark.read()
    assert mark is not None
    assert mark.generation == back.generation > lost.recorded
    with pytest.raises(StoreError, match="no rollback to accept"):
        back.accept_rollback("tester")
    back.close()
    reopened = _open(tmp_path)
    assert reopened.rollback is None
    assert reopened._rows("SELECT accepted_by, found, recorded, acked_seq FROM rollbacks") == [
        ("tester", lost.found, lost.recorded, 4)
    ]
    reopened.close()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{oops", "unreadable watermark"),
        ('{"version": 99, "generation": 1, "acked_seq": 0}', "has version 99"),
        ('{"version": 1}', "malformed watermark"),
    ],
)
def test_a_bad_watermark_is_one_clear_error(tmp_path: Path, content: str, message: str) -> None:
    _open(tmp_path).close()
    (tmp_path / "edge.db.watermark").write_text(content)
    with pytest.raises(StoreError, match=message):
        _open(tmp_path)


def test_the_wal_stays_bounded_under_many_commits(tmp_path: Path) -> None:
    store = _open(tmp_path)
    store.create_agent(new_agent("a1", "goal"))
    wal = tmp_path / "edge.db-wal"
    largest = 0
    for i in range(3000):  # ~ 12 MB of pages written through the WAL
        _step(store, "a1", payload="x" * 1500)
        if i % 50 == 0:
            largest = max(largest, wal.stat().st_size)
    store.close()
    bound = (WAL_AUTOCHECKPOINT_PAGES + 64) * 4096  # the threshold plus the commit that crossed it
    assert 0 < largest <= bound, f"WAL reached {largest} bytes"


def test_the_daemons_timer_copies_the_wal_so_losing_it_loses_nothing(tmp_path: Path) -> None:
    store = _open(tmp_path)
    store.create_agent(new_agent("a1", "goal"))
    for _ in range(5):
        _step(store, "a1")

    async def a_few_rounds() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(wal_checkpoints(store, 0.01, stop))
        await asyncio.sleep(0.1)
        stop.set()
        await task

    asyncio.run(a_few_rounds())
    frames, copied = store.wal_checkpoint()
    assert frames == copied  # nothing left that only the WAL holds
    os.truncate(tmp_path / "edge.db-wal", 0)  # while still open: no clean close copies it for us
    _copy(tmp_path, tmp_path / "after")
    shutil.copy(tmp_path / "edge.db.watermark", tmp_path / "after" / "edge.db.watermark")
    store.close()
    survivor = _open(tmp_path / "after")
    assert survivor.rollback is None
    assert survivor.load_agent("a1").step == 5
    survivor.close()
