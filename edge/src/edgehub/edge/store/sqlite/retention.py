"""Retention on the SQLite store: per kind, what it holds, which rows nothing needs any more, their
deletion, and giving freed pages back to the file system.

Each kind's ``eligible`` condition is checked twice: when candidates are listed, and again inside the
deleting transaction (``BEGIN IMMEDIATE``), so a row that became needed meanwhile (another process
wrote) is never deleted. What is never eligible: an outbox row the hub has not acknowledged, and the
newest acknowledged one (its sequence is what the next event follows, ``outbox_depth`` counts from and
the rollback check compares with the watermark); the state, turns, mind-log, notes and intents of an
agent that is pending, running or awaiting approval; an agent with an unresolved approval, or with a
step whose event the hub has not acknowledged; a mind-log row L3 has not indexed yet; an L3 episode
whose replication the hub has not acknowledged, or whose step is still in the mind-log (L3 would index
the step again).

Space: a store is created with ``auto_vacuum=INCREMENTAL`` (``connect``); a store from before is
switched once at open by ``VACUUM`` (it rewrites the file, so it needs as much free disk as the file
holds, and waits for no agent: the daemon does it before any runs). ``incremental_vacuum`` then hands
free pages back after each pruning pass; the file shrinks at the next WAL checkpoint.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import apsw

from edgehub.protocol.v1 import agent_pb2

from ..base import Candidate, Totals
from .connection import Connection

log = logging.getLogger("edgehub.edge.store")
S = agent_pb2
LIVE = f"({S.AGENT_STATUS_PENDING}, {S.AGENT_STATUS_RUNNING}, {S.AGENT_STATUS_AWAITING_APPROVAL})"
"""Statuses of agents whose state is current: nothing of theirs is pruned."""
_ENDS = (S.AGENT_STATUS_FINISHED, S.AGENT_STATUS_FAILED, S.AGENT_STATUS_STOPPED, S.AGENT_STATUS_MIGRATED)
ENDED = f"({', '.join(map(str, _ENDS))})"
"""Statuses of agents that ended here (or left for another device)."""
UNACKED = "EXISTS (SELECT 1 FROM outbox o WHERE o.event_id = {} AND o.acked = 0)"
"""The hub has not acknowledged the outbox event with this id."""
ROW_BYTES = 32
"""Added to each row's data for its record (an estimate; ``dbstat`` measures pages)."""


@dataclass(frozen=True, slots=True)
class Kind:
    """The SQL of one kind of data."""

    tables: tuple[str, ...]
    """Its tables and indexes (``LIKE`` patterns: what ``dbstat`` sums)."""
    totals: str
    """(rows, bytes, oldest) of the whole kind."""
    eligible: str
    """The WHERE condition of a row nothing needs any more (``:indexed``: L3's cursor)."""
    candidates: str
    """(key, at, bytes), eligible, oldest first, ``LIMIT :limit``."""
    delete: tuple[str, ...]
    """Statements deleting ``:keys`` (a ``json_each`` list) where still eligible; the last one's
    changes are the rows that went."""


_OUTBOX_ELIGIBLE = "acked = 1 AND seq < (SELECT COALESCE(MAX(seq), 0) FROM outbox WHERE acked = 1)"
_MIND_LOG_ELIGIBLE = (
    f"m.id <= :indexed AND NOT {UNACKED.format('m.event_id')} AND EXISTS (SELECT 1 FROM agents a"
    f" WHERE a.agent_id = m.agent_id AND a.status IN {ENDED})"
)
_AGENT_ELIGIBLE = (
    f"a.status IN {ENDED} AND NOT EXISTS (SELECT 1 FROM approvals p WHERE p.status = 'pending'"
    " AND p.agent_id = a.agent_id) AND NOT EXISTS (SELECT 1 FROM mind_log m WHERE m.agent_id = a.agent_id"
    f" AND (m.id > :indexed OR {UNACKED.format('m.event_id')}))"
)
_INTENT_ELIGIBLE = f"NOT EXISTS (SELECT 1 FROM agents a WHERE a.agent_id = i.agent_id AND a.status IN {LIVE})"
_EPISODE_ELIGIBLE = (  # its step's mind-log row gone too: L3 would index that step again after a restart
    f"NOT {UNACKED.format(chr(39) + 'episode/' + chr(39) + ' || e.key')}"
    " AND NOT EXISTS (SELECT 1 FROM mind_log m WHERE m.event_id = e.key)"
)
_KEYS = "(SELECT value FROM json_each(:keys))"
_AGENT_KEYS = f"(SELECT a.agent_id FROM agents a WHERE a.agent_id IN {_KEYS} AND {_AGENT_ELIGIBLE})"

KINDS: dict[str, Kind] = {
    "outbox": Kind(
        ("outbox", "outbox_unacked", "sqlite_autoindex_outbox_1"),
        f"SELECT COUNT(*), COALESCE(SUM(length(event)), 0) + COUNT(*) * {ROW_BYTES}, MIN(created_at)"
        " FROM outbox",
        _OUTBOX_ELIGIBLE,
        f"SELECT seq, created_at, length(event) + {ROW_BYTES} FROM outbox WHERE {_OUTBOX_ELIGIBLE}"
        " ORDER BY seq LIMIT :limit",
        (f"DELETE FROM outbox WHERE seq IN {_KEYS} AND {_OUTBOX_ELIGIBLE}",),
    ),
    "mind_log": Kind(
        ("mind_log", "mind_log_by_agent", "sqlite_autoindex_mind_log_1", "turns", "sqlite_autoindex_turns_1"),
        "SELECT (SELECT COUNT(*) FROM mind_log), (SELECT COALESCE(SUM(length(event)), 0)"
        f" + COUNT(*) * {ROW_BYTES} FROM mind_log)"
        f" + (SELECT COALESCE(SUM(length(text)), 0) + COUNT(*) * {ROW_BYTES} FROM turns),"
        " (SELECT MIN(created_at) FROM agents WHERE agent_id IN (SELECT agent_id FROM mind_log))",
        _MIND_LOG_ELIGIBLE,
        # oldest ended agents first (their rows in order), so the age of a row is its agent's end
        f"SELECT m.id, a.updated_at, length(m.event) + {ROW_BYTES} + COALESCE((SELECT SUM(length(t.text))"
        f" + COUNT(*) * {ROW_BYTES} FROM turns t WHERE t.agent_id = m.agent_id AND t.step = m.step"
        " AND m.id = (SELECT MIN(id) FROM mind_log f WHERE f.agent_id = m.agent_id AND f.step = m.step)), 0)"
        # (from the :limit agents that ended first and still have a mind-log: no sort of the whole log)
        f" FROM (SELECT agent_id, updated_at FROM agents x WHERE x.status IN {ENDED} AND EXISTS (SELECT 1"
        " FROM mind_log y WHERE y.agent_id = x.agent_id) ORDER BY x.updated_at LIMIT :limit) a"
        f" JOIN mind_log m ON m.agent_id = a.agent_id WHERE {_MIND_LOG_ELIGIBLE}"
        " ORDER BY a.updated_at, m.id LIMIT :limit",
        (
            "DELETE FROM turns WHERE (agent_id, step) IN (SELECT m.agent_id, m.step FROM mind_log m"
            f" WHERE m.id IN {_KEYS} AND {_MIND_LOG_ELIGIBLE})",
            f"DELETE FROM mind_log AS m WHERE m.id IN {_KEYS} AND {_MIND_LOG_ELIGIBLE}",
        ),
    ),
    "agents": Kind(
        ("agents", "agents_by_status", "sqlite_autoindex_agents_1", "notes", "sqlite_autoindex_notes_1"),
        f"SELECT COUNT(*), COALESCE(SUM(length(state)), 0) + COUNT(*) * {ROW_BYTES}, MIN(created_at)"
        " FROM agents",
        _AGENT_ELIGIBLE,
        f"SELECT agent_id, updated_at, length(state) + {ROW_BYTES} FROM agents a WHERE {_AGENT_ELIGIBLE}"
        " ORDER BY updated_at LIMIT :limit",
        (  # all it left behind, then the agent (its key list re-checked by each statement)
            *(f"DELETE FROM {t} WHERE agent_id IN {_AGENT_KEYS}" for t in ("turns", "notes", "intents")),
            f"DELETE FROM approvals WHERE status != 'pending' AND agent_id IN {_AGENT_KEYS}",
            f"DELETE FROM mind_log WHERE agent_id IN {_AGENT_KEYS}",
            f"DELETE FROM agents AS a WHERE a.agent_id IN {_KEYS} AND {_AGENT_ELIGIBLE}",
        ),
    ),
    "intents": Kind(
        ("intents", "sqlite_autoindex_intents_1", "intents_by_age", "intents_by_agent"),
        "SELECT COUNT(*), COALESCE(SUM(length(args_json) + length(proposal_json)"
        f" + COALESCE(length(result), 0)), 0) + COUNT(*) * {ROW_BYTES}, MIN(created_at) FROM intents",
        _INTENT_ELIGIBLE,
        "SELECT key, created_at, length(args_json) + length(proposal_json) + COALESCE(length(result), 0)"
        f" + {ROW_BYTES} FROM intents i WHERE {_INTENT_ELIGIBLE} ORDER BY created_at LIMIT :limit",
        (f"DELETE FROM intents AS i WHERE i.key IN {_KEYS} AND {_INTENT_ELIGIBLE}",),
    ),
    "episodes": Kind(
        ("episodes", "episodes_by_agent", "episodes_pruned", "sqlite_autoindex_episodes_1", "episode_bits%"),
        "SELECT COUNT(*), COALESCE(SUM(length(text) + COALESCE(length(embedding), 0)), 0)"
        f" + COUNT(*) * {ROW_BYTES + 48}, MIN(at) FROM episodes",
        _EPISODE_ELIGIBLE,
        f"SELECT id, at, length(text) + COALESCE(length(embedding), 0) + {ROW_BYTES + 48} FROM episodes e"
        f" WHERE {_EPISODE_ELIGIBLE} ORDER BY id LIMIT :limit",
        (
            f"DELETE FROM episode_bits WHERE rowid IN (SELECT e.id FROM episodes e WHERE e.id IN {_KEYS}"
            f" AND {_EPISODE_ELIGIBLE})",
            f"DELETE FROM episodes AS e WHERE e.id IN {_KEYS} AND {_EPISODE_ELIGIBLE}",
        ),
    ),
    "triggers": Kind(  # the record of trigger events: nothing else refers to it
        ("trigger_events", "trigger_events_by_trigger", "trigger_events_by_age"),
        "SELECT COUNT(*), COALESCE(SUM(length(trigger_id) + length(dedupe_key) + length(agent_id)), 0)"
        f" + COUNT(*) * {ROW_BYTES + 96}, MIN(received_at) FROM trigger_events",
        "1",
        "SELECT id, received_at, length(trigger_id) + length(dedupe_key) + length(agent_id)"
        f" + {ROW_BYTES + 96} FROM trigger_events ORDER BY received_at LIMIT :limit",
        (f"DELETE FROM trigger_events WHERE id IN {_KEYS}",),
    ),
}
NO_INDEX = 2**62
"""L3's cursor when L3 is off: every mind-log row counts as indexed."""


@dataclass(frozen=True, slots=True)
class FileStats:
    """The store's files and pages."""

    db_bytes: int
    wal_bytes: int
    page_size: int
    pages: int
    free_pages: int
    """Pages the file holds but no data uses (given back by the incremental vacuum)."""
    auto_vacuum: str
    """``none``, ``full`` or ``incremental`` (what a store switched for retention has)."""


class Retention(Connection):
    """Retention's queries (``retention.Pruner`` drives them) and the store's space."""

    def retention_totals(self, kind: str) -> Totals:
        rows, size, oldest = self._conn.execute(_kind(kind).totals).fetchone() or (0, 0, None)
        return Totals(int(rows), int(size), None if oldest is None else float(oldest))

    def prune_candidates(self, kind: str, limit: int, indexed_through: int | None = None) -> list[Candidate]:
        args = {"limit": limit, "indexed": NO_INDEX if indexed_through is None else indexed_through}
        rows = self._conn.execute(_kind(kind).candidates, _used(_kind(kind).candidates, args))
        return [Candidate(key, float(at), int(size)) for key, at, size in rows]

    def prune_rows(self, kind: str, keys: Sequence[str | int], indexed_through: int | None = None) -> int:
        """Delete these ``kind`` rows where still eligible, in one transaction; how many went."""
        if not keys:
            return 0
        spec = _kind(kind)
        args = {"keys": _json_list(keys), "indexed": NO_INDEX if indexed_through is None else indexed_through}
        with self._tx():
            for sql in spec.delete:
                self._conn.execute(sql, _used(sql, args))
            gone = self._conn.changes()
            self._conn.execute(
                "INSERT INTO pruned(kind, rows, last_at) VALUES (?, ?, ?) ON CONFLICT(kind)"
                " DO UPDATE SET rows = rows + excluded.rows, last_at = excluded.last_at",
                (kind, gone, time.time()),
            )
        return gone

    def pruned_so_far(self) -> dict[str, tuple[int, float]]:
        """Per kind: rows retention deleted over the store's life, and when it last did."""
        return {
            str(k): (int(n), float(at)) for k, n, at in self._rows("SELECT kind, rows, last_at FROM pruned")
        }

    def incremental_vacuum(self, pages: int) -> int:
        """Hand up to ``pages`` free pages back (the file shrinks at the next WAL checkpoint, which a
        passive one here attempts at once); how many were."""
        before = int(self._scalar("PRAGMA freelist_count"))
        if (refused := self.rolled_back) is not None:
            raise refused
        for _ in self._conn.execute(f"PRAGMA incremental_vacuum({int(pages)})"):
            pass
        freed = before - int(self._scalar("PRAGMA freelist_count"))
        if freed:
            self.wal_checkpoint()
        return freed

    def disk_bytes(self, kind: str) -> int | None:
        """Bytes of the pages ``kind``'s tables and indexes use (``dbstat``); None when SQLite was built
        without it."""
        names = _kind(kind).tables
        try:
            where = " OR ".join(["name LIKE ?"] * len(names))
            size = self._scalar(f"SELECT COALESCE(SUM(pgsize), 0) FROM dbstat WHERE {where}", names)
        except apsw.SQLError:  # no such table: dbstat
            return None
        return int(size)

    def file_stats(self) -> FileStats:
        wal = self.path.with_name(self.path.name + "-wal")
        modes = {0: "none", 1: "full", 2: "incremental"}
        return FileStats(
            db_bytes=self.path.stat().st_size,
            wal_bytes=wal.stat().st_size if wal.exists() else 0,
            page_size=int(self._scalar("PRAGMA page_size")),
            pages=int(self._scalar("PRAGMA page_count")),
            free_pages=int(self._scalar("PRAGMA freelist_count")),
            auto_vacuum=modes.get(int(self._scalar("PRAGMA auto_vacuum")), "unknown"),
        )

    def _switch_to_incremental_vacuum(self) -> None:
        """A store made before retention (``auto_vacuum`` none) is switched once with ``VACUUM`` (at
        open, before any agent runs); when that fails (no room for the copy, another process reading),
        pruning still frees pages for reuse, and the next open tries again."""
        if self.rollback is not None or int(self._scalar("PRAGMA auto_vacuum")) == 2:
            return
        try:
            self._conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self._conn.execute("VACUUM")
        except apsw.Error as exc:
            log.warning(
                "store %s: not switched to incremental vacuum (%s: %s)", self.path, type(exc).__name__, exc
            )
        else:
            log.info("store %s switched to incremental vacuum", self.path)


def _kind(kind: str) -> Kind:
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"no such kind of data: {kind!r} (kinds: {', '.join(KINDS)})") from None


def _used(sql: str, args: dict[str, Any]) -> dict[str, Any]:
    """The named parameters ``sql`` uses (apsw refuses extra ones)."""
    return {k: v for k, v in args.items() if f":{k}" in sql}


def _json_list(keys: Sequence[str | int]) -> str:
    return json.dumps(list(keys))
