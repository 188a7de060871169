"""Retention on the real SQLite store: it prunes exactly what the rules allow, never an outbox row the
hub has not acknowledged (nor the newest acknowledged one), a live agent's state, an unresolved approval
or a step L3 has not indexed; the file shrinks after pruning and the incremental vacuum."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import apsw
import numpy as np
import pytest

from edgehub.edge.agent.loop import new_agent
from edgehub.edge.config import EdgeConfig
from edgehub.edge.store import Intent, SqliteStore
from edgehub.edge.store.base import Approval, Candidate, Episode, Totals
from edgehub.edge.store.retention import Pruner, Rule, choose, rules_of
from edgehub.protocol.v1 import agent_pb2

S = agent_pb2
EVERYTHING = Rule(max_age_s=0.0)
"""Whatever nothing needs any more goes."""


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore.open(tmp_path / "edge.db", device_id="dev-1")
    yield s
    s.close()


def run_agent(
    store: SqliteStore,
    agent_id: str,
    steps: int,
    end: S.AgentStatus.ValueType = S.AGENT_STATUS_FINISHED,
    pad: int = 0,
) -> None:
    """An agent that took ``steps`` steps (each with a turn and an intent) and then ``end``ed."""
    store.create_agent(new_agent(agent_id, "goal"))
    for step in range(steps):
        state = store.load_agent(agent_id)
        state.status, state.step = S.AGENT_STATUS_RUNNING, step + 1
        if step == steps - 1:
            state.status = end
        key = f"{agent_id}/{step}"
        store.begin_intent(Intent(key, agent_id, step, "read_file", "{}", "{}", None))
        event = S.StepEvent(
            event_id=f"{agent_id}/0/{step}/action", agent_id=agent_id, step=step, kind=S.STEP_KIND_ACTION
        )
        event.thought = "x" * pad
        turns = [S.Turn(step=step, role="action", text="t" * pad, tokens=1)]
        store.checkpoint(state, event, turns, S.ToolResult(idempotency_key=key, ok=True))


def prune(store: SqliteStore, rules: dict[str, Rule], indexed: int | None = None) -> dict[str, int]:
    pruner = Pruner(store, rules, batch_rows=7, indexed_through=lambda: indexed)
    return asyncio.run(pruner.prune_once()).rows


def count(store: SqliteStore, table: str, where: str = "1") -> int:
    return int(store._scalar(f"SELECT COUNT(*) FROM {table} WHERE {where}"))


def test_choose_keeps_what_each_limit_allows_oldest_going_first() -> None:
    found = [Candidate(i, at=float(i), bytes=100) for i in range(10)]
    totals = Totals(rows=12, bytes=1200, oldest=0.0)
    assert choose(found, Rule(max_age_s=5.0), totals, now=10.0) == found[:5]  # at < 5
    assert choose(found, Rule(max_rows=9), totals, now=10.0) == found[:3]  # 12 rows -> 9
    assert choose(found, Rule(max_bytes=1000), totals, now=10.0) == found[:2]  # 1200 bytes -> 1000
    assert choose(found, Rule(max_rows=20, max_bytes=5000, max_age_s=20.0), totals, now=10.0) == []
    assert choose(found, Rule(), totals, now=10.0) == []  # no limit: nothing goes


def test_only_acknowledged_outbox_rows_go_and_never_the_newest_acknowledged(store: SqliteStore) -> None:
    run_agent(store, "a1", 10)
    store.outbox_ack(6)
    assert prune(store, {"outbox": EVERYTHING}) == {"outbox": 5}
    assert [seq for (seq,) in store._rows("SELECT seq FROM outbox ORDER BY seq")] == [6, 7, 8, 9, 10]
    assert store.outbox_depth() == 4  # the newest acked row kept: the depth and next sequence hold
    assert [e.seq for e in store.outbox_pending()] == [7, 8, 9, 10]
    run_agent(store, "a2", 1)
    assert store.outbox_pending()[-1].seq == 11  # gap-free after pruning


def test_an_acknowledged_event_leaves_its_sequence_and_id_but_not_its_body(store: SqliteStore) -> None:
    """Nothing reads an event the hub side stored (the mind-log holds the step): its row keeps only what
    the next sequence, the rollback checks and the dedupe of a re-checkpointed step need."""
    run_agent(store, "a1", 4, pad=300)
    store.outbox_ack(2)
    rows = store._rows("SELECT seq, acked, length(event), event_id FROM outbox ORDER BY seq")
    assert [(seq, acked) for seq, acked, _, _ in rows] == [(1, 1), (2, 1), (3, 0), (4, 0)]
    assert [size for _, _, size, _ in rows[:2]] == [0, 0]
    assert all(size > 300 for _, _, size, _ in rows[2:])  # what is still to send is whole
    assert [e.seq for e in store.outbox_pending()] == [3, 4]
    assert rows[0][3] == "a1/0/0/action"
    assert len(store.mind_log("a1")) == 4  # the step itself stays where it is read from


def test_an_ended_agents_mind_log_and_turns_go_once_the_hub_has_them(store: SqliteStore) -> None:
    run_agent(store, "done", 4)
    run_agent(store, "live", 3, end=S.AGENT_STATUS_RUNNING)
    store.outbox_ack(2)  # the hub has two of done's four steps
    assert prune(store, {"mind_log": EVERYTHING}) == {"mind_log": 2}
    assert [e.step for e in store.mind_log("done")] == [2, 3]
    assert [t.step for t in store.turns("done")] == [2, 3]
    store.outbox_ack(7)
    assert prune(store, {"mind_log": EVERYTHING}) == {"mind_log": 2}
    assert store.mind_log("done") == []
    assert store.turns("done") == []
    assert len(store.mind_log("live")) == 3
    assert len(store.turns("live")) == 3


def test_mind_log_rows_l3_has_not_indexed_stay(store: SqliteStore) -> None:
    run_agent(store, "done", 4)
    store.outbox_ack(4)
    first_two = int(store._scalar("SELECT id FROM mind_log WHERE step = 1"))
    assert prune(store, {"mind_log": EVERYTHING}, indexed=first_two) == {"mind_log": 2}
    assert [e.step for e in store.mind_log("done")] == [2, 3]


def test_ended_agents_go_with_all_they_left_but_live_ones_and_pending_approvals_stay(
    store: SqliteStore,
) -> None:
    run_agent(store, "done", 3)
    run_agent(store, "failed", 2, end=S.AGENT_STATUS_FAILED)
    run_agent(store, "live", 2, end=S.AGENT_STATUS_AWAITING_APPROVAL)
    run_agent(store, "waiting", 1, end=S.AGENT_STATUS_STOPPED)  # stopped while an approval is unresolved
    store.put_note("done", "k", "v")
    state = store.load_agent("waiting")
    approval = Approval("waiting/9", "waiting", 9, "run_command", "{}", "{}", "ask", "why")
    store.checkpoint(
        state, S.StepEvent(event_id="waiting/0/9/ask", agent_id="waiting", step=9), [], approval=approval
    )
    store.outbox_ack(100)
    rows = prune(store, {"agents": EVERYTHING, "intents": EVERYTHING})
    assert rows == {"agents": 2, "intents": 1}  # done and failed with their intents; waiting's intent
    assert {s.agent_id for s in store.list_agents()} == {"live", "waiting"}
    for gone in ("done", "failed"):
        assert count(store, "mind_log", f"agent_id = '{gone}'") == 0
        assert count(store, "turns", f"agent_id = '{gone}'") == 0
        assert count(store, "intents", f"agent_id = '{gone}'") == 0
    assert store.get_note("done", "k") is None
    assert store.get_approval("waiting/9") is not None
    assert len(store.mind_log("live")) == 2
    assert store.get_intent("live/1") is not None


def test_intents_of_agents_that_ended_go_and_a_live_agents_stay(store: SqliteStore) -> None:
    run_agent(store, "done", 3)
    run_agent(store, "live", 3, end=S.AGENT_STATUS_RUNNING)
    assert prune(store, {"intents": EVERYTHING}) == {"intents": 3}  # acks do not matter for intents
    assert store.get_intent("done/0") is None
    assert store.get_intent("live/0") is not None


def test_episodes_go_once_replicated_and_their_step_left_the_mind_log(store: SqliteStore) -> None:
    run_agent(store, "a", 2)
    vector = (np.ones(384) / np.sqrt(384)).astype(np.float32)
    episodes = [
        Episode(key, "a", f"memory {key}", 1.0, 0.5, 0, vector.tobytes()) for key in ("a/0/0/action", "m1")
    ]
    store.add_episodes(episodes[:1])
    store.add_episodes(episodes[1:], replicate="model")  # its outbox event, not yet acknowledged
    assert prune(store, {"episodes": EVERYTHING}) == {}  # a/0/0/action: its step is still in the mind-log
    store.outbox_ack(3)
    assert prune(store, {"mind_log": EVERYTHING, "episodes": EVERYTHING}) == {"mind_log": 2, "episodes": 2}
    assert store.episode_count() == 0
    assert store._scalar("SELECT COUNT(*) FROM episode_bits") == 0


def test_count_and_byte_limits_keep_the_newest(store: SqliteStore) -> None:
    run_agent(store, "a", 30, pad=1000)
    store.outbox_ack(30)
    assert prune(store, {"outbox": Rule(max_rows=10)}) == {"outbox": 20}
    assert count(store, "outbox") == 10
    totals = store.retention_totals("outbox")
    assert prune(store, {"outbox": Rule(max_bytes=totals.bytes // 2)}) == {"outbox": 5}
    assert store._scalar("SELECT MIN(seq) FROM outbox") == 26


def test_age_limit_keeps_younger_rows(store: SqliteStore) -> None:
    run_agent(store, "a", 5)
    store.outbox_ack(5)
    store._conn.execute("UPDATE outbox SET created_at = ? WHERE seq <= 2", (time.time() - 7200,))
    assert prune(store, {"outbox": Rule(max_age_s=3600)}) == {"outbox": 2}


def test_the_file_shrinks_after_pruning_and_the_incremental_vacuum(store: SqliteStore) -> None:
    for i in range(20):
        run_agent(store, f"a{i}", 10, pad=2000)
    store.outbox_ack(10_000)
    store.wal_checkpoint()
    before = store.file_stats()
    assert before.auto_vacuum == "incremental"
    rules = dict.fromkeys(("outbox", "mind_log", "agents", "intents"), EVERYTHING)
    pruner = Pruner(store, rules, batch_rows=50, vacuum_pages=64)
    report = asyncio.run(pruner.prune_once())
    after = store.file_stats()
    assert report.pages_freed > 0
    assert after.free_pages == 0
    assert after.db_bytes < before.db_bytes / 4, (before, after)
    assert store.pruned_so_far()["agents"][0] == 20


def test_a_store_from_before_retention_is_switched_to_incremental_vacuum_at_open(tmp_path: Path) -> None:
    path = tmp_path / "edge.db"
    SqliteStore.open(path, device_id="dev-1").close()
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA auto_vacuum=NONE")
    conn.execute("VACUUM")
    assert conn.execute("PRAGMA auto_vacuum").fetchone() == (0,)
    conn.close()
    store = SqliteStore.open(path, device_id="dev-1")
    assert store.file_stats().auto_vacuum == "incremental"
    store.close()


def test_a_step_committed_again_after_its_outbox_row_went_changes_nothing(store: SqliteStore) -> None:
    run_agent(store, "a", 3, end=S.AGENT_STATUS_RUNNING)
    store.outbox_ack(3)
    prune(store, {"outbox": EVERYTHING})
    state = store.load_agent("a")
    event = S.StepEvent(event_id="a/0/0/action", agent_id="a", step=0, kind=S.STEP_KIND_ACTION)
    assert store.checkpoint(state, event, []) == 0
    assert count(store, "mind_log") == 3


def test_retention_rules_come_from_config_and_the_hardware_budget() -> None:
    cfg = EdgeConfig.model_validate({"retention": {"budget_mb": 100, "outbox": {"max_rows": 5}}})
    rules = rules_of(cfg.retention)
    assert rules["outbox"] == Rule(max_age_s=None, max_rows=5, max_bytes=20 * 1024 * 1024)
    assert rules["mind_log"].max_bytes == 40 * 1024 * 1024
    assert rules["mind_log"].max_age_s == 7 * 86400
    assert rules_of(EdgeConfig.model_validate({"retention": {"enabled": False}}).retention) == {}
