"""The knowledge cache: the hub's last answer to each L4 query, for offline use."""

from __future__ import annotations

from .connection import Connection

KNOWLEDGE_CACHE_ROWS = 2000
"""Answers kept; the oldest beyond go."""


class KnowledgeRows(Connection):
    """The ``knowledge_cache`` table."""

    KNOWLEDGE_CACHE_ROWS = KNOWLEDGE_CACHE_ROWS

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
