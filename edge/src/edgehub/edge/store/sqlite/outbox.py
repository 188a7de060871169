"""What the device keeps of its steps and sends: the mind-log (every step event, kept), the outbox (the
events for the hub, in a gap-free sequence, PII-masked) and the vault of what the masking sealed."""

from __future__ import annotations

import time
from collections.abc import Sequence

from edgehub.protocol.v1 import agent_pb2, events_pb2, models_pb2, task_pb2
from edgehub.sync.tracing import traceparent

from ..base import OutboxEntry, VaultEntry
from .connection import Connection

EDGE_EVENT_SCHEMA_VERSION = 1
MAX_RESULT_CHARS = 16_000
"""Characters of a task's answer (and failure reason) sent to the hub."""


class Outbox(Connection):
    """The ``mind_log``, ``outbox`` and ``pii_vault`` tables."""

    # mind-log --------------------------------------------------------------------------------------
    def mind_log(self, agent_id: str, after_step: int = -1, limit: int = 1000) -> list[agent_pb2.StepEvent]:
        rows = self._rows(
            "SELECT event FROM mind_log WHERE agent_id = ? AND step > ? ORDER BY id LIMIT ?",
            (agent_id, after_step, limit),
        )
        return [agent_pb2.StepEvent.FromString(r[0]) for r in rows]

    def _log_event(self, event: agent_pb2.StepEvent) -> None:
        self._conn.execute(
            "INSERT INTO mind_log(agent_id, step, kind, event_id, event) VALUES (?,?,?,?,?)",
            (event.agent_id, event.step, event.kind, event.event_id, event.SerializeToString()),
        )

    # outbox ----------------------------------------------------------------------------------------
    def outbox_pending(self, limit: int = 1000) -> list[OutboxEntry]:
        rows = self._rows(
            "SELECT seq, event, traceparent FROM outbox WHERE acked = 0 ORDER BY seq LIMIT ?", (limit,)
        )
        return [OutboxEntry(s, events_pb2.EdgeEvent.FromString(e), str(t)) for s, e, t in rows]

    def outbox_depth(self) -> int:
        """Entries not yet acknowledged by the hub side.

        Sequences are gap-free and acks cumulative, so this is the newest seq minus the newest acked
        one: two index lookups instead of counting a backlog that may hold days of offline events
        (the daemon asks on every scheduler tick).
        """
        newest = self._scalar("SELECT COALESCE(MAX(seq), 0) FROM outbox")
        acked = self._scalar("SELECT COALESCE(MAX(seq), 0) FROM outbox WHERE acked = 1")
        return int(newest) - int(acked)

    def outbox_head(self) -> int:
        """The sequence of the newest entry (0: none yet); the twin reports it for the hub's lag."""
        return int(self._scalar("SELECT COALESCE(MAX(seq), 0) FROM outbox"))

    def outbox_ack(self, upto_seq: int) -> None:
        """The hub side stored every event up to ``upto_seq``. Their rows keep the sequence and the event
        id (the next sequence, the rollback checks and the dedupe of a re-checkpointed step need them)
        but not the event: nothing reads an acknowledged one, and the mind-log holds the step."""
        self._acked = max(self._acked, upto_seq)  # true once the hub side said so, whatever happens here
        with self._tx(seal=True):
            self._conn.execute(
                "UPDATE outbox SET acked = 1, event = x'' WHERE acked = 0 AND seq <= ?", (upto_seq,)
            )

    def _append_outbox(self, step: agent_pb2.StepEvent) -> int:
        """A step event for the hub, masked (inside the caller's transaction); its sequence number."""
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

    def append_shadow_step(self, agent_id: str, epoch: int, shadow: models_pb2.ShadowStep) -> int:
        """A shadow model's proposal for a step (parity-gated rollout), masked like a step event's
        thought and arguments, in its own transaction; its sequence number. Its id names the rollout
        and the step, so a step shadowed again after a crash is kept once (0: it was already)."""
        event_id = f"shadow/{shadow.rollout_id}/{agent_id}/{shadow.step}"
        with self._tx():
            if self._scalar("SELECT 1 FROM outbox WHERE event_id = ?", (event_id,)):
                return 0
            if self.outgoing is not None:
                sealed: list[VaultEntry] = []
                for name in ("current_thought", "current_args", "shadow_thought", "shadow_args"):
                    setattr(shadow, name, self.outgoing.mask(getattr(shadow, name), sealed))
                self._seal(sealed)
            event = events_pb2.EdgeEvent(event_id=event_id, agent_id=agent_id, epoch=epoch)
            event.shadow_step.CopyFrom(shadow)
            return self._enqueue(event)

    def _enqueue(self, envelope: events_pb2.EdgeEvent) -> int:
        """Append an event to the outbox with the next sequence number (inside the caller's transaction),
        with the current span's trace context (the step's checkpoint; '' when tracing is off)."""
        seq = int(self._scalar("SELECT COALESCE(MAX(seq), 0) + 1 FROM outbox"))
        envelope.schema_version = EDGE_EVENT_SCHEMA_VERSION
        envelope.device_id = self.device_id
        envelope.seq = seq
        self._conn.execute(
            "INSERT INTO outbox(seq, event_id, event, created_at, traceparent) VALUES (?,?,?,?,?)",
            (seq, envelope.event_id, envelope.SerializeToString(), time.time(), traceparent()),
        )
        return seq

    # PII vault -------------------------------------------------------------------------------------
    def vault_get(self, token: str) -> VaultEntry | None:
        row = self._conn.execute(
            "SELECT token, kind, sealed FROM pii_vault WHERE token = ?", (token,)
        ).fetchone()
        return None if row is None else VaultEntry(str(row[0]), str(row[1]), bytes(row[2]))

    def _seal(self, sealed: Sequence[VaultEntry]) -> None:
        for entry in sealed:
            self._conn.execute(
                "INSERT OR IGNORE INTO pii_vault(token, kind, sealed, created_at) VALUES (?,?,?,?)",
                (entry.token, entry.kind, entry.sealed, time.time()),
            )
