"""L3 episodic memory: embedded episodes (float32 for the exact ranking, binary-quantized in
sqlite-vec for the KNN scan), replicated to the hub through the outbox, pruned once consolidated."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgehub.protocol.v1 import agent_pb2, events_pb2

from ..base import Episode, VaultEntry
from .outbox import Outbox

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


class Episodes(Outbox):
    """The ``episodes`` and ``episode_bits`` tables."""

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
