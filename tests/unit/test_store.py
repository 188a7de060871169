"""The edge store: one conformance suite every EdgeStore backend must pass (SQLite today)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import apsw
import numpy as np
import pytest

from edgehub.edge.agent.loop import new_agent
from edgehub.edge.errors import AgentNotFound, SchemaVersionError, StoreError
from edgehub.edge.safety import Scrubber, VaultKey
from edgehub.edge.store import Intent, SqliteStore
from edgehub.edge.store.base import Approval, Episode
from edgehub.edge.store.schema import LATEST, MIGRATIONS
from edgehub.edge.store.sqlite import EPISODE_PARTS
from edgehub.protocol.v1 import agent_pb2

S = agent_pb2
Factory = Callable[[Path], SqliteStore]
BACKENDS: dict[str, Factory] = {"sqlite": lambda p: SqliteStore.open(p / "edge.db", device_id="dev-1")}


@pytest.fixture(params=sorted(BACKENDS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqliteStore]:
    s = BACKENDS[request.param](tmp_path)
    yield s
    s.close()


def step_event(agent_id: str, step: int, kind: str = "action") -> agent_pb2.StepEvent:
    return S.StepEvent(event_id=f"{agent_id}/0/{step}/{kind}", agent_id=agent_id, step=step, kind=1)


def advance(store: SqliteStore, agent_id: str, step: int, key: str = "") -> int:
    state = store.load_agent(agent_id)
    state.step = step + 1
    turns = [S.Turn(step=step, role="action", text=f"a{step}", tokens=1)]
    result = S.ToolResult(idempotency_key=key, ok=True, output="out") if key else None
    return store.checkpoint(state, step_event(agent_id, step), turns, result)


def test_agents_are_created_loaded_listed_and_updated(store: SqliteStore) -> None:
    store.create_agent(new_agent("a1", "goal one"))
    store.create_agent(new_agent("a2", "goal two"))
    with pytest.raises(StoreError, match="already exists"):
        store.create_agent(new_agent("a1", "again"))
    state = store.load_agent("a2")
    state.status = S.AGENT_STATUS_RUNNING
    store.update_agent(state)
    assert [s.agent_id for s in store.list_agents()] == ["a1", "a2"]
    assert [s.agent_id for s in store.list_agents((S.AGENT_STATUS_RUNNING,))] == ["a2"]
    with pytest.raises(AgentNotFound):
        store.load_agent("nope")


def test_checkpoint_commits_state_turns_event_intent_and_outbox_together(store: SqliteStore) -> None:
    store.create_agent(new_agent("a1", "g"))
    store.begin_intent(Intent("a1/0", "a1", 0, "noop", "{}", "{}", None))
    seq = advance(store, "a1", 0, key="a1/0")
    assert store.load_agent("a1").step == 1
    assert [t.text for t in store.turns("a1")] == ["a0"]
    assert [e.event_id for e in store.mind_log("a1")] == ["a1/0/0/action"]
    intent = store.get_intent("a1/0")
    assert intent is not None
    assert intent.result is not None
    assert intent.result.output == "out"
    (entry,) = store.outbox_pending()
    assert entry.seq == seq == 1
    assert entry.event.step.event_id == "a1/0/0/action"
    assert entry.event.device_id == "dev-1"


def test_a_failed_checkpoint_leaves_no_trace_of_the_step(store: SqliteStore) -> None:
    store.create_agent(new_agent("a1", "g"))
    advance(store, "a1", 0)
    state = store.load_agent("a1")
    state.step = 2
    bad_turns = [S.Turn(step=1, role="action", text="x"), S.Turn(step=1, role="action", text="y")]
    # a duplicate primary key for the second turn makes the transaction fail half-way
    store._conn.execute("INSERT INTO turns VALUES ('a1', 1, 1, 'action', 'clash', 0)")
    with pytest.raises(apsw.ConstraintError):
        store.checkpoint(state, step_event("a1", 1), bad_turns)
    assert store.load_agent("a1").step == 1
    assert [e.step for e in store.mind_log("a1")] == [0]
    assert [e.seq for e in store.outbox_pending()] == [1]
    assert [t.text for t in store.turns("a1", from_step=1)] == ["clash"]


def test_checkpointing_the_same_event_twice_changes_nothing(store: SqliteStore) -> None:
    store.create_agent(new_agent("a1", "g"))
    first = advance(store, "a1", 0)
    again = advance(store, "a1", 0)
    assert first == again
    assert len(store.mind_log("a1")) == 1
    assert len(store.turns("a1")) == 1


def test_outbox_sequence_is_gap_free_and_acks_are_cumulative(store: SqliteStore) -> None:
    for agent in ("a1", "a2"):
        store.create_agent(new_agent(agent, "g"))
    seqs = [advance(store, a, s) for s in range(3) for a in ("a1", "a2")]
    assert seqs == [1, 2, 3, 4, 5, 6]
    store.outbox_ack(4)
    assert [e.seq for e in store.outbox_pending()] == [5, 6]


def test_notes_are_upserted_and_searchable(store: SqliteStore) -> None:
    store.put_note("a1", "door code", "4417")
    store.put_note("a1", "door code", "9000")
    store.put_note("a1", "colour", "blue door")
    store.put_note("a2", "door code", "other agent")
    assert store.get_note("a1", "door code") == "9000"
    assert sorted(store.search_notes("a1", "door")) == [("colour", "blue door"), ("door code", "9000")]
    assert store.search_notes("a1", "nothing-like-this") == []


def test_a_second_connection_sees_committed_steps(store: SqliteStore, tmp_path: Path) -> None:
    store.create_agent(new_agent("a1", "g"))
    advance(store, "a1", 0)
    reader = SqliteStore.open(store.path, device_id="dev-1")
    try:
        assert reader.load_agent("a1").step == 1
        assert len(reader.mind_log("a1")) == 1
    finally:
        reader.close()


def test_an_approval_is_stored_with_the_paused_step_and_decided_once(store: SqliteStore) -> None:
    store.create_agent(new_agent("a1", "g"))
    state = store.load_agent("a1")
    state.status = S.AGENT_STATUS_AWAITING_APPROVAL
    pending = Approval("a1/0", "a1", 0, "run_command", '{"command": "rm -rf x"}', "{}", "r", "why")
    pending = dataclasses.replace(pending, policy_version=3, policy_digest="sha256:ab")
    store.checkpoint(state, step_event("a1", 0, "approval"), [], approval=pending)
    assert store.load_agent("a1").status == S.AGENT_STATUS_AWAITING_APPROVAL
    assert [a.key for a in store.list_approvals()] == ["a1/0"]
    state.status = S.AGENT_STATUS_RUNNING
    decided = dataclasses.replace(pending, status="approved", decided_by="ana")
    store.decide_approval(decided, state, step_event("a1", 0, "approval-decided"))
    got = store.get_approval("a1/0")
    assert got is not None
    assert (got.status, got.decided_by) == ("approved", "ana")
    assert (got.policy_version, got.policy_digest) == (3, "sha256:ab")  # the policy that asked for it
    assert store.load_agent("a1").status == S.AGENT_STATUS_RUNNING
    assert store.list_approvals() == []
    with pytest.raises(StoreError, match="not pending"):
        store.decide_approval(dataclasses.replace(pending, status="denied"), state, step_event("a1", 0, "x"))
    assert store.get_approval("a1/0").status == "approved"  # type: ignore[union-attr]


def test_a_store_from_an_older_edgehub_is_migrated_keeping_its_agents(tmp_path: Path) -> None:
    conn = apsw.Connection(str(tmp_path / "e.db"))
    conn.execute(MIGRATIONS[0].sql)
    conn.execute("PRAGMA user_version = 1")
    state = new_agent("old", "from v1")
    conn.execute(
        "INSERT INTO agents(agent_id, status, state, created_at, updated_at) VALUES (?,?,?,?,?)",
        ("old", state.status, state.SerializeToString(), 0.0, 0.0),
    )
    conn.close()
    store = SqliteStore.open(tmp_path / "e.db", device_id="d")
    assert store.schema_version == LATEST
    assert store.load_agent("old").goal == "from v1"
    assert store.list_approvals() == []
    assert store.vault_get("<EMAIL_abcdefghij>") is None


def test_a_store_from_a_newer_edgehub_is_refused(tmp_path: Path) -> None:
    SqliteStore.open(tmp_path / "e.db", device_id="d").close()
    conn = apsw.Connection(str(tmp_path / "e.db"))
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(SchemaVersionError, match="newer"):
        SqliteStore.open(tmp_path / "e.db", device_id="d")


def test_a_corrupt_store_file_gives_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "e.db").write_bytes(b"not a database at all" * 500)
    with pytest.raises(StoreError, match="not a database"):
        SqliteStore.open(tmp_path / "e.db", device_id="d")


def test_store_runs_in_wal_mode_with_full_sync(store: SqliteStore) -> None:
    assert store._scalar("PRAGMA journal_mode") == "wal"
    assert store._scalar("PRAGMA synchronous") == 2  # FULL


def test_the_store_sqlite_can_load_extensions(store: SqliteStore) -> None:
    # sqlite-vec (L3 memory) loads into this same database; this CPython's sqlite3 module cannot do that
    store._conn.enable_load_extension(True)
    with pytest.raises(apsw.ExtensionLoadingError):
        store._conn.load_extension("/nonexistent/vec0")


def _episode(key: str, text: str = "the belt on line 3 slipped", agent_id: str = "a1") -> Episode:
    vector = np.zeros(384, np.float32)
    vector[hash(key) % 384] = 1.0
    return Episode(key, agent_id, text, 1_700_000_000.0, 0.5, 3, vector.tobytes())


def test_replicated_episodes_enter_the_outbox_masked_in_the_same_transaction(tmp_path: Path) -> None:
    scrubber = Scrubber(VaultKey(os.urandom(32)))
    store = SqliteStore.open(tmp_path / "edge.db", device_id="dev-1", outgoing=scrubber)
    text = "mail ana@example.com about the belt"
    assert store.add_episodes([_episode("k1", text)], replicate="all-MiniLM-L6-v2") == 1
    assert store.add_episodes([_episode("k1", text)], replicate="all-MiniLM-L6-v2") == 0  # idempotent
    assert store.add_episodes([_episode("k2")]) == 1  # not replicated
    (entry,) = store.outbox_pending()
    event = entry.event
    assert (event.event_id, event.device_id, event.agent_id) == ("episode/k1", "dev-1", "a1")
    ep = event.episode
    assert "ana@example.com" not in ep.text
    assert "<EMAIL_" in ep.text
    assert (ep.key, ep.step, ep.embedding_model, len(ep.embedding)) == ("k1", 3, "all-MiniLM-L6-v2", 384)
    assert ep.at.ToSeconds() == 1_700_000_000
    assert store.nearest_episodes(_episode("k1").embedding, 1)[0].text == text  # the device keeps it
    store.close()


def test_pruned_episodes_leave_recall_and_are_deleted_after_retention(store: SqliteStore) -> None:
    store.add_episodes([_episode(f"k{i}") for i in range(4)])
    marked, deleted = store.prune_episodes(["k0", "k1", "nope"], "run-1", keep_s=3600, now=1000.0)
    assert (marked, deleted) == (2, 0)
    assert store.episode_count() == 2
    assert store.prune_episodes(["k0"], "run-2", keep_s=3600, now=2000.0) == (0, 0)  # first mark kept
    assert {e.key for e in store.nearest_episodes(_episode("k0").embedding, 4)} == {"k2", "k3"}
    marked, deleted = store.prune_episodes(["k2"], "run-3", keep_s=3600, now=4600.0)  # run-1's are due
    assert (marked, deleted) == (1, 2)
    assert store.episode_count() == 1
    assert store.prune_episodes([], "run-4", keep_s=0, now=4600.0) == (0, 1)  # 0: at once
    assert store.episode_count() == 1
    assert store._scalar("SELECT COUNT(*) FROM episode_bits") == 1


def test_episode_search_covers_every_partition_and_stays_exact(store: SqliteStore) -> None:
    """The sign-bit index is split in EPISODE_PARTS partitions (migration 7), each scanned for its share
    of the candidates: with candidates enough for every row, the answer is the exact nearest, overall
    and for one agent; add and prune keep the index and the episodes in step."""
    rnd = np.random.default_rng(7)
    vectors = rnd.standard_normal((200, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store.add_episodes(
        [
            Episode(f"k{i}", f"a{i % 3}", f"memory {i}", 1.0, 0.5, i, v.tobytes())
            for i, v in enumerate(vectors)
        ]
    )
    parts = store._rows("SELECT part, COUNT(*) FROM episode_bits GROUP BY part")
    assert parts == [(p, 200 // EPISODE_PARTS) for p in range(EPISODE_PARTS)]
    query = vectors[17] + 0.5 * vectors[42]
    query /= np.linalg.norm(query)
    exact = [f"k{i}" for i in np.argsort(-(vectors @ query))]
    found = store.nearest_episodes(query.tobytes(), 10, candidates=200)
    assert [e.key for e in found] == exact[:10]
    assert found[0].distance == pytest.approx(1 - float(vectors[17] @ query), abs=1e-5)
    mine = [e.key for e in store.nearest_episodes(query.tobytes(), 5, "a2", candidates=200)]
    assert mine == [k for k in exact if int(k[1:]) % 3 == 2][:5]
    assert len(store.nearest_episodes(query.tobytes(), 10, candidates=16)) == 10  # 2 per partition
    assert store.prune_episodes(exact[:3], "run-1", keep_s=0, now=10.0) == (3, 3)
    assert store._scalar("SELECT COUNT(*) FROM episode_bits") == store.episode_count() == 197
    assert [e.key for e in store.nearest_episodes(query.tobytes(), 4)] == exact[3:7]


def test_the_knowledge_cache_keeps_the_newest_answers(store: SqliteStore) -> None:
    assert store.knowledge_cached("line 3") is None
    store.cache_knowledge("line 3", b"old", 1.0)
    store.cache_knowledge("line 3", b"new", 2.0)
    assert store.knowledge_cached("line 3") == (b"new", 2.0)
    store.KNOWLEDGE_CACHE_ROWS = 3  # type: ignore[misc]
    for i in range(5):
        store.cache_knowledge(f"q{i}", b"a", 10.0 + i)
    assert store._scalar("SELECT COUNT(*) FROM knowledge_cache") == 3
    assert store.knowledge_cached("q4") is not None
    assert store.knowledge_cached("q1") is None
