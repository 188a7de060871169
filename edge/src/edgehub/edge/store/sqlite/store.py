"""``SqliteStore``: the edge store on one SQLite file (through apsw: modern SQLite, extension loading
for sqlite-vec), composed of one class per concern over the shared connection, and the step commit
that writes across them in one transaction."""

from __future__ import annotations

import time
from pathlib import Path

import apsw

from edgehub.protocol.v1 import agent_pb2

from ...errors import StoreError
from ..base import Approval, Intent, OutgoingFilter
from .connection import connect, connect_readonly
from .episodes import Episodes
from .knowledge import KnowledgeRows
from .transfer import Transfer

TASK_ENDS = (agent_pb2.AGENT_STATUS_FINISHED, agent_pb2.AGENT_STATUS_FAILED, agent_pb2.AGENT_STATUS_STOPPED)
"""Statuses that end a hub-planned task's agent: the store reports the task's result."""


class SqliteStore(Transfer, Episodes, KnowledgeRows):
    """``DeviceStore`` on one SQLite file: agents (``agents``), mind-log, outbox and PII vault
    (``outbox``), L2 turns and notes (``sessions``), approvals, migration (``transfer``), L3
    (``episodes``), the knowledge cache, and here the tool intents and the step commit. Not
    thread-safe: use it from one thread (the event loop)."""

    @classmethod
    def open(cls, path: Path, *, device_id: str, outgoing: OutgoingFilter | None = None) -> SqliteStore:
        """Open (creating and migrating as needed) the store at ``path``."""
        path = Path(path)
        conn = connect(path)
        store = cls(conn, path=path, device_id=device_id, outgoing=outgoing)
        try:
            store._migrate()
        except apsw.Error as exc:
            raise StoreError(f"cannot open: {exc.__class__.__name__}: {exc}", path=str(path)) from None
        return store

    @classmethod
    def open_readonly(cls, path: Path, *, device_id: str) -> SqliteStore:
        """Open the existing store at ``path`` to read (writes fail): for commands that only show what
        is there, which must create nothing. ``StoreError`` when there is none or it needs a migration."""
        path = Path(path)
        store = cls(connect_readonly(path), path=path, device_id=device_id)
        try:
            store._check_readonly()
        except apsw.Error as exc:
            raise StoreError(f"cannot read: {exc.__class__.__name__}: {exc}", path=str(path)) from None
        return store

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
