"""The record of trigger events: which site event started which agent, or why it started none."""

from __future__ import annotations

import time

import apsw

from edgehub.protocol.v1 import agent_pb2

from ...errors import StoreError
from ..base import TriggerEvent
from .connection import Connection

_INSERT = (
    "INSERT INTO trigger_events(trigger_id, dedupe_key, digest, received_at, outcome, agent_id)"
    " VALUES (?,?,?,?,?,?)"
)


class TriggerRows(Connection):
    """The ``trigger_events`` table (and the agent a started event creates, in the same transaction)."""

    def record_trigger(self, event: TriggerEvent, agent: agent_pb2.AgentState | None = None) -> None:
        """Keep ``event``; with ``agent`` (a started event), create that PENDING agent in the same
        transaction, so no agent exists without its record nor a record without its agent."""
        try:
            with self._tx(seal=agent is not None):
                if agent is not None:
                    now = time.time()
                    self._conn.execute(
                        "INSERT INTO agents(agent_id, status, state, created_at, updated_at)"
                        " VALUES (?,?,?,?,?)",
                        (agent.agent_id, agent.status, agent.SerializeToString(), now, now),
                    )
                self._conn.execute(_INSERT, _row(event))
        except apsw.ConstraintError:
            raise StoreError(f"agent {event.agent_id!r} already exists", path=str(self.path)) from None

    def trigger_events(
        self, trigger_id: str | None = None, limit: int = 50, outcome: str | None = None
    ) -> list[TriggerEvent]:
        """The newest ``limit`` records (of one trigger or all; with one outcome or any), newest first."""
        conds = [c for c, v in (("trigger_id = ?", trigger_id), ("outcome = ?", outcome)) if v is not None]
        args: tuple[str, ...] = tuple(v for v in (trigger_id, outcome) if v is not None)
        where = f"WHERE {' AND '.join(conds)}" if conds else ""
        rows = self._rows(
            "SELECT trigger_id, dedupe_key, digest, received_at, outcome, agent_id FROM trigger_events"
            f" {where} ORDER BY received_at DESC, id DESC LIMIT ?",
            (*args, limit),
        )
        return [TriggerEvent(str(t), str(k), str(d), float(at), str(o), str(a)) for t, k, d, at, o, a in rows]

    def trigger_starts(self, trigger_id: str, since: float) -> list[tuple[str, float]]:
        """(dedupe key, received_at) of the agents ``trigger_id`` started since ``since``, oldest first:
        what its gate is seeded with after a restart."""
        rows = self._rows(
            "SELECT dedupe_key, received_at FROM trigger_events WHERE trigger_id = ? AND received_at >= ?"
            " AND outcome = 'started' ORDER BY received_at",
            (trigger_id, since),
        )
        return [(str(k), float(at)) for k, at in rows]


def _row(e: TriggerEvent) -> tuple[str, str, str, float, str, str]:
    return (e.trigger_id, e.dedupe_key, e.digest, e.received_at, e.outcome, e.agent_id)
