"""The edge store on SQLite (through apsw: modern SQLite, extension loading for sqlite-vec).

Durability settings: WAL journal, ``synchronous=FULL`` (a committed step survives power loss, not just a
process crash), ``BEGIN IMMEDIATE`` for every write so the daemon and the CLI never deadlock on a lock
upgrade, and a busy timeout so a short overlap waits instead of failing.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import apsw
import numpy as np
import sqlite_vec

from edgehub.protocol.v1 import agent_pb2, events_pb2, task_pb2

from ..errors import AgentNotFound, SchemaVersionError, StoreError
from .base import Approval, Episode, Intent, OutboxEntry, OutgoingFilter, VaultEntry
from .schema import LATEST, MIGRATIONS

BUNDLE_SCHEMA_VERSION = 1
"""``AgentBundle.schema_version`` this store writes and reads."""

EDGE_EVENT_SCHEMA_VERSION = 1
TASK_ENDS = (agent_pb2.AGENT_STATUS_FINISHED, agent_pb2.AGENT_STATUS_FAILED, agent_pb2.AGENT_STATUS_STOPPED)
"""Statuses that end a hub-planned task's agent: the store reports the task's result."""
MAX_RESULT_CHARS = 16_000
"""Characters of a task's answer (and failure reason) sent to the hub."""
EPISODE_PARTS = 8
"""``episode_bits`` is partitioned on ``episodes.id % EPISODE_PARTS`` (migration 7, which has the 8 in its
SQL): sqlite-vec's KNN costs about k x rows, so each partition is asked for its share of the candidates."""


def _episode_search_sql(by_agent: bool) -> str:
    """One statement: the KNN of each partition (?1 the query vector, ?2 the candidates per partition,
    ?3 the agent), then those candidates' episode rows with their float32 vectors."""
    agent = " AND agent_id = ?3" if by_agent else ""
    scans = " UNION ALL ".join(
        "SELECT * FROM (SELECT rowid FROM episode_bits"
        f" WHERE bits MATCH vec_quantize_binary(?1) AND k = ?2 AND part = {part}{agent})"
        for part in range(EPISODE_PARTS)
    )
    return (
        "SELECT key, agent_id, text, at, importance, source_step, embedding FROM episodes"
        f" WHERE id IN ({scans}) AND pruned_at IS NULL"
    )


_EPISODE_SEARCH = {by_agent: _episode_search_sql(by_agent) for by_agent in (False, True)}


class SqliteStore:
    """EdgeStore on one SQLite file. Not thread-safe: use it from one thread (the event loop)."""

    def __init__(
        self, conn: apsw.Connection, *, path: Path, device_id: str, outgoing: OutgoingFilter | None = None
    ) -> None:
        self._conn = conn
        self.path = path
        self.device_id = device_id
        self.outgoing = outgoing
        """Applied to each event entering the outbox (PII masking); the mind-log keeps the original."""

    @classmethod
    def open(cls, path: Path, *, device_id: str, outgoing: OutgoingFilter | None = None) -> SqliteStore:
        """Open (creating and migrating as needed) the store at ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = apsw.Connection(str(path))
            conn.enable_load_extension(True)
            conn.load_extension(sqlite_vec.loadable_path())  # L3 vectors (episode_bits)
            conn.enable_load_extension(False)
            conn.set_busy_timeout(5000)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            store = cls(conn, path=path, device_id=device_id, outgoing=outgoing)
            store._migrate()
        except apsw.Error as exc:
            raise StoreError(f"cannot open: {exc.__class__.__name__}: {exc}", path=str(path)) from None
        return store

    def _migrate(self) -> None:
        version = self._scalar("PRAGMA user_version")
        if version > LATEST:
            raise SchemaVersionError(path=str(self.path), found=version, supported=LATEST)
        for migration in MIGRATIONS:
            if migration.version <= version:
                continue
            with self._tx():
                if self._scalar("PRAGMA user_version") >= migration.version:
                    continue  # another process migrated while we waited for the lock
                self._conn.execute(migration.sql)
                self._conn.execute(f"PRAGMA user_version={migration.version}")

    @property
    def schema_version(self) -> int:
        return self._scalar("PRAGMA user_version")

    # helpers ---------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _scalar(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        row = self._conn.execute(sql, args).fetchone()
        return None if row is None else row[0]

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return list(self._conn.execute(sql, args))

    # agents ----------------------------------------------------------------------------------------
    def create_agent(self, state: agent_pb2.AgentState) -> None:
        now = time.time()
        try:
            with self._tx():
                self._conn.execute(
                    "INSERT INTO agents(agent_id, status, state, created_at, updated_at) VALUES (?,?,?,?,?)",
                    (state.agent_id, state.status, state.SerializeToString(), now, now),
                )
        except apsw.ConstraintError:
            raise StoreError(f"agent {state.agent_id!r} already exists", path=str(self.path)) from None

    def has_agent(self, agent_id: str) -> bool:
        return self._scalar("SELECT 1 FROM agents WHERE agent_id = ?", (agent_id,)) is not None

    def load_agent(self, agent_id: str) -> agent_pb2.AgentState:
        blob = self._scalar("SELECT state FROM agents WHERE agent_id = ?", (agent_id,))
        if blob is None:
            raise AgentNotFound(agent_id)
        return agent_pb2.AgentState.FromString(blob)

    def list_agents(self, statuses: tuple[int, ...] = ()) -> list[agent_pb2.AgentState]:
        sql = "SELECT state FROM agents"
        if statuses:
            sql += f" WHERE status IN ({','.join('?' * len(statuses))})"
        rows = self._rows(sql + " ORDER BY created_at, agent_id", tuple(statuses))
        return [agent_pb2.AgentState.FromString(r[0]) for r in rows]

    def update_agent(self, state: agent_pb2.AgentState) -> None:
        with self._tx():
            self._put_state(state)

    def _put_state(self, state: agent_pb2.AgentState) -> None:
        self._conn.execute(
            "UPDATE agents SET status = ?, state = ?, updated_at = ? WHERE agent_id = ?",
            (state.status, state.SerializeToString(), time.time(), state.agent_id),
        )
        if self._conn.changes() != 1:
            raise AgentNotFound(state.agent_id)

    # migration -------------------------------------------------------------------------------------
    def export_agent(self, agent_id: str) -> agent_pb2.AgentBundle:
        """What moves with the agent: state, turns, notes, approvals (the source, at a step boundary).
        An agent that already left (MIGRATED) is exported with the status it left with, so a handover
        repeated after a crash carries the same state."""
        state = self.load_agent(agent_id)
        if state.status == agent_pb2.AGENT_STATUS_MIGRATED:
            state.status = state.migrated_from
        state.ClearField("migration_id")
        state.ClearField("migrated_to")
        state.ClearField("migrated_from")
        bundle = agent_pb2.AgentBundle(
            schema_version=BUNDLE_SCHEMA_VERSION,
            state=state,
            turns=self.turns(agent_id),
            source_device=self.device_id,
        )
        for key, value in self._rows(
            "SELECT key, value FROM notes WHERE agent_id = ? ORDER BY key", (agent_id,)
        ):
            bundle.notes.add(key=key, value=value)
        for a in self._rows(
            f"SELECT {self._APPROVAL_COLS} FROM approvals WHERE agent_id = ? ORDER BY key", (agent_id,)
        ):
            r = Approval(*a)
            bundle.approvals.add(
                key=r.key,
                step=r.step,
                tool=r.tool,
                args_json=r.args_json,
                proposal_json=r.proposal_json,
                rule=r.rule,
                reason=r.reason,
                status=r.status,
                decided_by=r.decided_by,
                note=r.note,
                requested_at=r.requested_at or 0.0,
                decided_at=r.decided_at or 0.0,
            )
        bundle.exported_at.GetCurrentTime()
        return bundle

    def mark_migrated(self, agent_id: str, migration_id: str, target: str) -> agent_pb2.AgentState:
        """The agent left (or is leaving) for ``target``: it is never run here again (not ACTIVE)."""
        with self._tx():
            state = self.load_agent(agent_id)
            if state.status != agent_pb2.AGENT_STATUS_MIGRATED:
                state.migrated_from = state.status
            state.status = agent_pb2.AGENT_STATUS_MIGRATED
            state.migration_id, state.migrated_to = migration_id, target
            self._put_state(state)
        return state

    def unmark_migrated(self, agent_id: str, migration_id: str) -> bool:
        """The hub refused the handover (the migration failed before the epoch moved): the agent runs
        here again with the status it had. False if it is not MIGRATED for ``migration_id``."""
        with self._tx():
            state = self.load_agent(agent_id)
            if state.status != agent_pb2.AGENT_STATUS_MIGRATED or state.migration_id != migration_id:
                return False
            state.status = state.migrated_from
            for field in ("migration_id", "migrated_to", "migrated_from"):
                state.ClearField(field)
            self._put_state(state)
        return True

    def import_agent(self, bundle: agent_pb2.AgentBundle, epoch: int) -> bool:
        """Take over the agent in ``bundle`` with ``epoch`` (the target, or the source when it comes
        back): one transaction replaces any older copy. False (nothing changed) when this device
        already has the agent at ``epoch`` or newer: a repeated import."""
        if bundle.schema_version != BUNDLE_SCHEMA_VERSION:
            raise StoreError(
                f"agent bundle version {bundle.schema_version} is not supported", path=str(self.path)
            )
        state = agent_pb2.AgentState()
        state.CopyFrom(bundle.state)
        agent_id = state.agent_id
        if not agent_id:
            raise StoreError("agent bundle without an agent id", path=str(self.path))
        state.epoch = epoch
        now = time.time()
        with self._tx():
            blob = self._scalar("SELECT state FROM agents WHERE agent_id = ?", (agent_id,))
            if blob is not None:
                if agent_pb2.AgentState.FromString(blob).epoch >= epoch:
                    return False
                for table in ("turns", "notes", "approvals"):
                    self._conn.execute(f"DELETE FROM {table} WHERE agent_id = ?", (agent_id,))
                self._put_state(state)
            else:
                self._conn.execute(
                    "INSERT INTO agents(agent_id, status, state, created_at, updated_at) VALUES (?,?,?,?,?)",
                    (agent_id, state.status, state.SerializeToString(), now, now),
                )
            self._add_turns(agent_id, bundle.turns)
            for note in bundle.notes:
                self._conn.execute(
                    "INSERT INTO notes(agent_id, key, value, updated_at) VALUES (?,?,?,?)",
                    (agent_id, note.key, note.value, now),
                )
            for a in bundle.approvals:  # this agent has none here now: each is inserted as it was
                self._put_approval(
                    Approval(
                        a.key,
                        agent_id,
                        a.step,
                        a.tool,
                        a.args_json,
                        a.proposal_json,
                        a.rule,
                        a.reason,
                        a.status,
                        a.decided_by,
                        a.note,
                        a.requested_at,
                        a.decided_at or None,
                    )
                )
        return True

    # intents ---------------------------------------------------------------------------------------
    def begin_intent(self, intent: Intent) -> None:
        with self._tx():
            self._conn.execute(
                "INSERT OR IGNORE INTO intents"
                "(key, agent_id, step, tool, args_json, proposal_json, created_at)"
                " VALUES (?,?,?,?,?,?,?)",
                (
                    intent.key,
                    intent.agent_id,
                    intent.step,
                    intent.tool,
                    intent.args_json,
                    intent.proposal_json,
                    time.time(),
                ),
            )

    def get_intent(self, key: str) -> Intent | None:
        row = self._conn.execute(
            "SELECT key, agent_id, step, tool, args_json, proposal_json, result FROM intents WHERE key = ?",
            (key,),
        ).fetchone()
        if row is None:
            return None
        result = agent_pb2.ToolResult.FromString(row[6]) if row[6] is not None else None
        key, agent_id, step, tool, args_json, proposal_json = row[:6]
        return Intent(key, agent_id, step, tool, args_json, proposal_json, result)

    # the step commit -------------------------------------------------------------------------------
    def checkpoint(
        self,
        state: agent_pb2.AgentState,
        event: agent_pb2.StepEvent,
        turns: list[agent_pb2.Turn],
        result: agent_pb2.ToolResult | None = None,
        approval: Approval | None = None,
    ) -> int:
        with self._tx():
            seq = self._scalar("SELECT seq FROM outbox WHERE event_id = ?", (event.event_id,))
            if seq is not None:
                return int(seq)  # this step was committed before: change nothing
            self._put_state(state)
            self._add_turns(state.agent_id, turns)
            self._log_event(event)
            if result is not None and result.idempotency_key:
                self._conn.execute(
                    "UPDATE intents SET result = ? WHERE key = ?",
                    (result.SerializeToString(), result.idempotency_key),
                )
            if approval is not None:
                self._put_approval(approval)
            seq = self._append_outbox(event)
            if state.task_id and state.status in TASK_ENDS:
                seq = self._append_task_result(state, event)
            return seq

    def _add_turns(self, agent_id: str, turns: Sequence[agent_pb2.Turn]) -> None:
        """Append turns (inside the caller's transaction); ``idx`` orders those of one step."""
        for idx, turn in enumerate(turns):
            self._conn.execute(
                "INSERT INTO turns(agent_id, step, idx, role, text, tokens) VALUES (?,?,?,?,?,?)",
                (agent_id, turn.step, idx, turn.role, turn.text, turn.tokens),
            )

    def _log_event(self, event: agent_pb2.StepEvent) -> None:
        self._conn.execute(
            "INSERT INTO mind_log(agent_id, step, kind, event_id, event) VALUES (?,?,?,?,?)",
            (event.agent_id, event.step, event.kind, event.event_id, event.SerializeToString()),
        )

    def _append_outbox(self, step: agent_pb2.StepEvent) -> int:
        if self.outgoing is not None:
            step, sealed = self.outgoing(step)
            self._seal(sealed)
        return self._enqueue(
            events_pb2.EdgeEvent(event_id=step.event_id, agent_id=step.agent_id, epoch=step.epoch, step=step)
        )

    def _append_task_result(self, state: agent_pb2.AgentState, end: agent_pb2.StepEvent) -> int:
        """A hub-planned task's outcome, in the transaction of the step that ended its agent (so the hub
        hears of it exactly when the step is committed; its id is the step's, so resends dedupe)."""
        answer, reason = state.answer[:MAX_RESULT_CHARS], state.failure_reason[:MAX_RESULT_CHARS]
        if self.outgoing is not None:
            sealed: list[VaultEntry] = []
            answer, reason = self.outgoing.mask(answer, sealed), self.outgoing.mask(reason, sealed)
            self._seal(sealed)
        result = task_pb2.TaskResult(
            schema_version=1,
            task_id=state.task_id,
            agent_id=state.agent_id,
            status=state.status,
            answer=answer,
            failure_reason=reason,
            usage=state.usage,
        )
        result.finished_at.GetCurrentTime()
        event = events_pb2.EdgeEvent(event_id=f"task/{end.event_id}", agent_id=state.agent_id)
        event.epoch = state.epoch
        event.task_result.CopyFrom(result)
        return self._enqueue(event)

    def _append_episode(self, e: Episode, model: str) -> int:
        text = e.text
        if self.outgoing is not None:
            sealed: list[VaultEntry] = []
            text = self.outgoing.mask(text, sealed)
            self._seal(sealed)
        body = events_pb2.Episode(
            key=e.key,
            text=text,
            embedding=np.frombuffer(e.embedding, np.float32).tolist(),
            embedding_model=model,
            importance=e.importance,
            step=e.source_step,
        )
        body.at.FromMilliseconds(int(e.at * 1000))
        return self._enqueue(
            events_pb2.EdgeEvent(event_id=f"episode/{e.key}", agent_id=e.agent_id, episode=body)
        )

    def _seal(self, sealed: Sequence[VaultEntry]) -> None:
        for entry in sealed:
            self._conn.execute(
                "INSERT OR IGNORE INTO pii_vault(token, kind, sealed, created_at) VALUES (?,?,?,?)",
                (entry.token, entry.kind, entry.sealed, time.time()),
            )

    def _enqueue(self, envelope: events_pb2.EdgeEvent) -> int:
        """Append an event to the outbox with the next sequence number (inside the caller's transaction)."""
        seq = int(self._scalar("SELECT COALESCE(MAX(seq), 0) + 1 FROM outbox"))
        envelope.schema_version = EDGE_EVENT_SCHEMA_VERSION
        envelope.device_id = self.device_id
        envelope.seq = seq
        self._conn.execute(
            "INSERT INTO outbox(seq, event_id, event, created_at) VALUES (?,?,?,?)",
            (seq, envelope.event_id, envelope.SerializeToString(), time.time()),
        )
        return seq

    # approvals -------------------------------------------------------------------------------------
    _APPROVAL_COLS = (
        "key, agent_id, step, tool, args_json, proposal_json, rule, reason, status, decided_by, note,"
        " requested_at, decided_at"
    )

    def _put_approval(self, a: Approval) -> None:
        self._conn.execute(
            f"INSERT INTO approvals({self._APPROVAL_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT(key) DO UPDATE SET tool = excluded.tool, args_json = excluded.args_json,"
            " proposal_json = excluded.proposal_json, rule = excluded.rule, reason = excluded.reason,"
            " requested_at = excluded.requested_at WHERE approvals.status = 'pending'",
            (
                a.key,
                a.agent_id,
                a.step,
                a.tool,
                a.args_json,
                a.proposal_json,
                a.rule,
                a.reason,
                a.status,
                a.decided_by,
                a.note,
                a.requested_at or time.time(),
                a.decided_at,
            ),
        )

    def get_approval(self, key: str) -> Approval | None:
        row = self._conn.execute(
            f"SELECT {self._APPROVAL_COLS} FROM approvals WHERE key = ?", (key,)
        ).fetchone()
        return None if row is None else Approval(*row)

    def list_approvals(self, status: str | None = "pending") -> list[Approval]:
        sql = f"SELECT {self._APPROVAL_COLS} FROM approvals"
        args: tuple[Any, ...] = ()
        if status is not None:
            sql, args = sql + " WHERE status = ?", (status,)
        return [Approval(*row) for row in self._rows(sql + " ORDER BY requested_at, key", args)]

    def decide_approval(
        self, approval: Approval, state: agent_pb2.AgentState, event: agent_pb2.StepEvent
    ) -> None:
        with self._tx():
            self._conn.execute(
                "UPDATE approvals SET status = ?, decided_by = ?, note = ?, decided_at = ?"
                " WHERE key = ? AND status = 'pending'",
                (approval.status, approval.decided_by, approval.note, time.time(), approval.key),
            )
            if self._conn.changes() != 1:
                raise StoreError(f"approval {approval.key!r} is not pending", path=str(self.path))
            self._put_state(state)
            self._log_event(event)
            self._append_outbox(event)

    # PII vault -------------------------------------------------------------------------------------
    def vault_get(self, token: str) -> VaultEntry | None:
        row = self._conn.execute(
            "SELECT token, kind, sealed FROM pii_vault WHERE token = ?", (token,)
        ).fetchone()
        return None if row is None else VaultEntry(str(row[0]), str(row[1]), bytes(row[2]))

    # L2 session memory -----------------------------------------------------------------------------
    def turns(self, agent_id: str, from_step: int = 0) -> list[agent_pb2.Turn]:
        rows = self._rows(
            "SELECT step, role, text, tokens FROM turns WHERE agent_id = ? AND step >= ? ORDER BY step, idx",
            (agent_id, from_step),
        )
        return [agent_pb2.Turn(step=s, role=r, text=t, tokens=n) for s, r, t, n in rows]

    def put_note(self, agent_id: str, key: str, value: str) -> None:
        with self._tx():
            self._conn.execute(
                "INSERT INTO notes(agent_id, key, value, updated_at) VALUES (?,?,?,?)"
                " ON CONFLICT(agent_id, key)"
                " DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                (agent_id, key, value, time.time()),
            )

    def get_note(self, agent_id: str, key: str) -> str | None:
        value = self._scalar("SELECT value FROM notes WHERE agent_id = ? AND key = ?", (agent_id, key))
        return None if value is None else str(value)

    def search_notes(self, agent_id: str, query: str, limit: int = 5) -> list[tuple[str, str]]:
        words = [w for w in query.lower().split() if w] or [""]
        clause = " OR ".join("(instr(lower(key), ?) > 0 OR instr(lower(value), ?) > 0)" for _ in words)
        args = tuple(x for w in words for x in (w, w))
        rows = self._rows(
            f"SELECT key, value FROM notes WHERE agent_id = ? AND ({clause})"
            " ORDER BY updated_at DESC LIMIT ?",
            (agent_id, *args, limit),
        )
        return [(str(k), str(v)) for k, v in rows]

    # L3 episodes ---------------------------------------------------------------------------------
    def add_episodes(self, episodes: Sequence[Episode], *, replicate: str | None = None) -> int:
        """Store episodes with their embeddings (one transaction); a key already stored is skipped.
        ``replicate`` (the embedding model's name): each new episode also enters the outbox, in the
        same transaction, PII-masked, for the hub's consolidation. Returns how many were new."""
        added = 0
        with self._tx():
            for e in episodes:
                if self._scalar("SELECT 1 FROM episodes WHERE key = ?", (e.key,)):
                    continue
                self._conn.execute(
                    "INSERT INTO episodes(key, agent_id, text, at, importance, source_step, embedding)"
                    " VALUES (?,?,?,?,?,?,?)",
                    (e.key, e.agent_id, e.text, e.at, e.importance, e.source_step, e.embedding),
                )
                rowid = self._conn.last_insert_rowid()
                self._conn.execute(
                    "INSERT INTO episode_bits(rowid, part, agent_id, bits)"
                    " VALUES (?, ?, ?, vec_quantize_binary(?))",
                    (rowid, rowid % EPISODE_PARTS, e.agent_id, e.embedding),
                )
                if replicate is not None:
                    self._append_episode(e, replicate)
                added += 1
        return added

    def nearest_episodes(
        self, embedding: bytes, k: int, agent_id: str | None = None, *, candidates: int = 0
    ) -> list[Episode]:
        """The ``k`` episodes nearest to ``embedding`` (unit float32), pruned ones left out, each with
        ``distance`` (cosine distance) set.

        Two stages: a KNN scan of the binary-quantized vectors (hamming distance, 32x less to read
        than float32) for ``candidates`` (default ``max(100, 8k)``), then the exact cosine of those
        candidates' float32 vectors. The scan runs in each of the EPISODE_PARTS partitions for its
        share (sqlite-vec's KNN costs about k x rows: 8 partitions x 20 cost what one scan for 20
        does), all in one statement with the fetch of the rows. With embeddings of related texts the
        candidates hold the exact top k (bench/memory measures the overlap).
        """
        wanted = candidates or max(100, 8 * k)
        per_part = -(-wanted // EPISODE_PARTS)
        args: tuple[Any, ...] = (embedding, per_part) + ((agent_id,) if agent_id is not None else ())
        rows = self._rows(_EPISODE_SEARCH[agent_id is not None], args)
        if not rows:
            return []
        query = np.frombuffer(embedding, np.float32)
        distances = (
            1.0 - np.frombuffer(b"".join(r[6] for r in rows), np.float32).reshape(len(rows), -1) @ query
        )
        order = np.argsort(distances)[:k]
        return [
            Episode(str(r[0]), str(r[1]), str(r[2]), float(r[3]), float(r[4]), int(r[5]), distance=float(d))
            for r, d in ((rows[i], distances[i]) for i in order)
        ]

    def prune_episodes(
        self, keys: Sequence[str], run_id: str, *, keep_s: float, now: float | None = None
    ) -> tuple[int, int]:
        """Mark episodes consolidated by the hub's run ``run_id`` (recall no longer returns them), then
        delete every episode marked at least ``keep_s`` ago (the retention policy; 0: these at once).
        Returns (marked now, deleted). Idempotent: an episode already marked keeps its first mark."""
        now = time.time() if now is None else now
        delete_before = now - keep_s
        with self._tx():
            marked = 0
            for key in keys:
                self._conn.execute(
                    "UPDATE episodes SET pruned_at = ?, pruned_by = ? WHERE key = ? AND pruned_at IS NULL",
                    (now, run_id, key),
                )
                marked += self._conn.changes()
            doomed = [
                int(r[0])
                for r in self._rows("SELECT id FROM episodes WHERE pruned_at <= ?", (delete_before,))
            ]
            for chunk in range(0, len(doomed), 500):
                ids = doomed[chunk : chunk + 500]
                marks = ",".join("?" * len(ids))
                self._conn.execute(f"DELETE FROM episode_bits WHERE rowid IN ({marks})", tuple(ids))
                self._conn.execute(f"DELETE FROM episodes WHERE id IN ({marks})", tuple(ids))
        return marked, len(doomed)

    def recent_episode_texts(self, limit: int = 500) -> list[str]:
        """The texts of the newest ``limit`` episodes not consolidated away (what the device knows now)."""
        rows = self._rows(
            "SELECT text FROM episodes WHERE pruned_at IS NULL ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [str(r[0]) for r in rows]

    def episode_count(self) -> int:
        return int(self._scalar("SELECT COUNT(*) FROM episodes WHERE pruned_at IS NULL"))

    def unindexed_steps(self, after_id: int = 0, limit: int = 256) -> list[tuple[int, agent_pb2.StepEvent]]:
        """(mind-log id, step) of action and end steps after ``after_id`` that have no episode yet,
        oldest first (L3 catches up from the mind-log, its source of truth)."""
        rows = self._rows(
            "SELECT m.id, m.event FROM mind_log m LEFT JOIN episodes e ON e.key = m.event_id"
            " WHERE m.id > ? AND e.id IS NULL AND m.kind IN (?, ?) ORDER BY m.id LIMIT ?",
            (after_id, agent_pb2.STEP_KIND_ACTION, agent_pb2.STEP_KIND_END, limit),
        )
        return [(int(r[0]), agent_pb2.StepEvent.FromString(r[1])) for r in rows]

    # knowledge cache -------------------------------------------------------------------------------
    KNOWLEDGE_CACHE_ROWS = 2000

    def knowledge_cached(self, query: str) -> tuple[bytes, float] | None:
        """(answer, fetched_at) of the last answer to ``query``, or None."""
        rows = self._rows("SELECT answer, fetched_at FROM knowledge_cache WHERE query = ?", (query,))
        return (bytes(rows[0][0]), float(rows[0][1])) if rows else None

    def cache_knowledge(self, query: str, answer: bytes, fetched_at: float) -> None:
        """Keep the answer (replacing an older one); the oldest beyond KNOWLEDGE_CACHE_ROWS go."""
        with self._tx():
            self._conn.execute(
                "INSERT OR REPLACE INTO knowledge_cache(query, answer, fetched_at) VALUES (?,?,?)",
                (query, answer, fetched_at),
            )
            self._conn.execute(
                "DELETE FROM knowledge_cache WHERE query IN (SELECT query FROM knowledge_cache"
                " ORDER BY fetched_at DESC LIMIT -1 OFFSET ?)",
                (self.KNOWLEDGE_CACHE_ROWS,),
            )

    # mind-log and outbox ---------------------------------------------------------------------------
    def mind_log(self, agent_id: str, after_step: int = -1, limit: int = 1000) -> list[agent_pb2.StepEvent]:
        rows = self._rows(
            "SELECT event FROM mind_log WHERE agent_id = ? AND step > ? ORDER BY id LIMIT ?",
            (agent_id, after_step, limit),
        )
        return [agent_pb2.StepEvent.FromString(r[0]) for r in rows]

    def outbox_pending(self, limit: int = 1000) -> list[OutboxEntry]:
        rows = self._rows("SELECT seq, event FROM outbox WHERE acked = 0 ORDER BY seq LIMIT ?", (limit,))
        return [OutboxEntry(seq=s, event=events_pb2.EdgeEvent.FromString(e)) for s, e in rows]

    def outbox_depth(self) -> int:
        """Entries not yet acknowledged by the hub side.

        Sequences are gap-free and acks cumulative, so this is the newest seq minus the newest acked
        one: two index lookups instead of counting a backlog that may hold days of offline events
        (the daemon asks on every scheduler tick).
        """
        newest = self._scalar("SELECT COALESCE(MAX(seq), 0) FROM outbox")
        acked = self._scalar("SELECT COALESCE(MAX(seq), 0) FROM outbox WHERE acked = 1")
        return int(newest) - int(acked)

    def outbox_ack(self, upto_seq: int) -> None:
        with self._tx():
            self._conn.execute("UPDATE outbox SET acked = 1 WHERE acked = 0 AND seq <= ?", (upto_seq,))

    def close(self) -> None:
        self._conn.close()
