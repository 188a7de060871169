"""``SqliteStore``: the edge store on one SQLite file (through apsw: modern SQLite, extension loading
for sqlite-vec), composed of one class per concern over the shared connection, and the step commit
that writes across them in one transaction."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import apsw

from edgehub.protocol.v1 import agent_pb2, events_pb2

from ...errors import StoreDamaged, StoreError
from ..base import Approval, Intent, OutgoingFilter
from .connection import DAMAGE, check, connect, connect_readonly
from .episodes import Episodes
from .knowledge import KnowledgeRows
from .outbox import EDGE_EVENT_SCHEMA_VERSION
from .retention import Retention
from .transfer import Transfer
from .triggers import TriggerRows
from .watermark import AcceptedRollback

log = logging.getLogger("edgehub.edge.store")
RESUMABLE = (
    agent_pb2.AGENT_STATUS_PENDING,
    agent_pb2.AGENT_STATUS_RUNNING,
    agent_pb2.AGENT_STATUS_AWAITING_APPROVAL,
)
"""Statuses of agents that go on (from their last kept checkpoint) once a rollback is accepted."""
TASK_ENDS = (agent_pb2.AGENT_STATUS_FINISHED, agent_pb2.AGENT_STATUS_FAILED, agent_pb2.AGENT_STATUS_STOPPED)
"""Statuses that end a hub-planned task's agent: the store reports the task's result."""


class SqliteStore(Transfer, Episodes, KnowledgeRows, Retention, TriggerRows):
    """``DeviceStore`` on one SQLite file: agents (``agents``), mind-log, outbox and PII vault
    (``outbox``), L2 turns and notes (``sessions``), approvals, migration (``transfer``), L3
    (``episodes``), the knowledge cache, retention (``retention``), trigger events (``triggers``), and
    here the tool intents and the step commit. Not thread-safe: use it from one thread (the event loop)."""

    @classmethod
    def open(cls, path: Path, *, device_id: str, outgoing: OutgoingFilter | None = None) -> SqliteStore:
        """Open (creating and migrating as needed) the store at ``path``. ``StoreDamaged`` when SQLite's
        quick check finds it damaged; behind its watermark, it opens with ``rollback`` set (readable,
        every write refused; the daemon refuses to run on it). A store from before retention is switched
        to incremental vacuum once (``retention``)."""
        path = Path(path)
        store = cls(connect(path), path=path, device_id=device_id, outgoing=outgoing)
        return store._checked(
            "open", store._migrate, store._check_watermark, store._switch_to_incremental_vacuum
        )

    @classmethod
    def open_readonly(cls, path: Path, *, device_id: str) -> SqliteStore:
        """Open the existing store at ``path`` to read (writes fail): for commands that only show what
        is there, which must create nothing. ``StoreError`` when there is none or it needs a migration."""
        path = Path(path)
        store = cls(connect_readonly(path), path=path, device_id=device_id)
        return store._checked("read", store._check_readonly, lambda: store._check_watermark(record=False))

    def _checked(self, verb: str, *steps: Callable[[], None]) -> SqliteStore:
        """This freshly opened store after SQLite's quick check and ``steps`` (closed when any fails):
        damage is ``StoreDamaged``, another SQLite error a ``StoreError`` saying it cannot ``verb``."""
        path = str(self.path)
        try:
            if problems := check(self._conn):
                raise StoreDamaged(path=path, problems=problems)
            for step in steps:
                step()
        except DAMAGE as exc:
            self.close()
            raise StoreDamaged(path=path, problems=[f"{exc.__class__.__name__}: {exc}"]) from None
        except apsw.Error as exc:
            self.close()
            raise StoreError(f"cannot {verb}: {exc.__class__.__name__}: {exc}", path=path) from None
        except BaseException:
            self.close()
            raise
        return self

    def accept_rollback(self, by: str, lost_seen: tuple[str, ...] = ()) -> AcceptedRollback:
        """Accept what the store lost (``rollback``), recorded in ``rollbacks`` with ``lost_seen`` (what
        the hub had seen of it, one line each): the generation moves past the watermark's, the outbox
        goes on after the highest sequence the hub side acknowledged (so new events are not taken for
        resends of applied ones), and the active agents resume from the checkpoints the store kept,
        repeating the lost steps (``edgehub.edge.recovery`` stops first those the hub saw do more)."""
        lost = self.rollback
        if lost is None:
            raise StoreError("is not behind its watermark: no rollback to accept", path=str(self.path))
        agents = tuple(s.agent_id for s in self.list_agents(RESUMABLE))
        accepted = AcceptedRollback(lost, by, agents, lost_seen)
        self.rollback = None  # lets this one transaction write
        try:
            with self._tx(seal=True):
                self._conn.execute("UPDATE store_meta SET generation = ?", (lost.recorded,))
                self._conn.execute("UPDATE outbox SET acked = 1 WHERE seq <= ?", (lost.acked_seq,))
                if lost.outbox_seq < lost.acked_seq:  # an acked placeholder: the next event is acked_seq + 1
                    self._placeholder(lost.acked_seq)
                self._conn.execute(
                    "INSERT INTO rollbacks(accepted_at, accepted_by, found, recorded, acked_seq, outbox_seq,"
                    " agents, lost) VALUES (?,?,?,?,?,?,?,?)",
                    (time.time(), by, lost.found, lost.recorded, lost.acked_seq, lost.outbox_seq,
                     json.dumps(accepted.agents), json.dumps(lost_seen)),
                )  # fmt: skip
        except BaseException:
            self.rollback = lost
            raise
        log.warning("store %s: rollback accepted by %s: %s", self.path, by, accepted)
        return accepted

    def held_agents(self) -> list[str]:
        return [s.agent_id for s in self.list_agents(RESUMABLE)]

    def _placeholder(self, seq: int) -> None:
        """An acknowledged outbox entry at ``seq`` that is never sent (inside the caller's transaction)."""
        event = events_pb2.EdgeEvent(event_id=f"rollback/{seq}", device_id=self.device_id, seq=seq)
        event.schema_version = EDGE_EVENT_SCHEMA_VERSION
        self._conn.execute(
            "INSERT INTO outbox(seq, event_id, event, created_at, acked) VALUES (?,?,?,?,1)",
            (seq, event.event_id, event.SerializeToString(), time.time()),
        )

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
        with self._tx(seal=True):
            seq = self._scalar("SELECT seq FROM outbox WHERE event_id = ?", (event.event_id,))
            if seq is not None:
                return int(seq)  # this step was committed before: change nothing
            if self._scalar("SELECT 1 FROM mind_log WHERE event_id = ?", (event.event_id,)) is not None:
                return 0  # committed before too, and its outbox entry pruned since (the hub had it)
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
