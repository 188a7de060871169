"""L2 session memory: each agent's turns (its conversation, by step) and its notes."""

from __future__ import annotations

import time
from collections.abc import Sequence

from edgehub.protocol.v1 import agent_pb2

from .connection import Connection


class Sessions(Connection):
    """The ``turns`` and ``notes`` tables."""

    def turns(self, agent_id: str, from_step: int = 0) -> list[agent_pb2.Turn]:
        rows = self._rows(
            "SELECT step, role, text, tokens FROM turns WHERE agent_id = ? AND step >= ? ORDER BY step, idx",
            (agent_id, from_step),
        )
        return [agent_pb2.Turn(step=s, role=r, text=t, tokens=n) for s, r, t, n in rows]

    def _add_turns(self, agent_id: str, turns: Sequence[agent_pb2.Turn]) -> None:
        """Append turns (inside the caller's transaction); ``idx`` orders those of one step."""
        for idx, turn in enumerate(turns):
            self._conn.execute(
                "INSERT INTO turns(agent_id, step, idx, role, text, tokens) VALUES (?,?,?,?,?,?)",
                (agent_id, turn.step, idx, turn.role, turn.text, turn.tokens),
            )

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
