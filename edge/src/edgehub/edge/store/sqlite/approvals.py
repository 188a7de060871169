"""Approvals: tool calls policy marked needs-approval, and the operator's decisions on them."""

from __future__ import annotations

import time
from dataclasses import astuple, replace
from typing import Any

import apsw

from edgehub.protocol.v1 import agent_pb2

from ...errors import StoreError
from ..base import Approval
from .agents import AgentRows
from .outbox import Outbox

APPROVAL_COLS = (
    "key, agent_id, step, tool, args_json, proposal_json, rule, reason, status, decided_by, note,"
    " requested_at, decided_at, decided_via, decision_id, policy_version, policy_digest"
)
"""The ``approvals`` columns in the order of ``Approval``'s fields."""


class Approvals(AgentRows, Outbox):
    """The ``approvals`` table; a decision commits with the agent's new state and its event."""

    def _put_approval(self, a: Approval) -> None:
        """Insert, or refresh a pending one (inside the caller's transaction); a decided one stays."""
        self._conn.execute(
            f"INSERT INTO approvals({APPROVAL_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT(key) DO UPDATE SET tool = excluded.tool, args_json = excluded.args_json,"
            " proposal_json = excluded.proposal_json, rule = excluded.rule, reason = excluded.reason,"
            " requested_at = excluded.requested_at, policy_version = excluded.policy_version,"
            " policy_digest = excluded.policy_digest WHERE approvals.status = 'pending'",
            astuple(replace(a, requested_at=a.requested_at or time.time())),  # in APPROVAL_COLS' order
        )

    def get_approval(self, key: str) -> Approval | None:
        row = self._conn.execute(f"SELECT {APPROVAL_COLS} FROM approvals WHERE key = ?", (key,)).fetchone()
        return None if row is None else Approval(*row)

    def list_approvals(self, status: str | None = "pending") -> list[Approval]:
        sql = f"SELECT {APPROVAL_COLS} FROM approvals"
        args: tuple[Any, ...] = ()
        if status is not None:
            sql, args = sql + " WHERE status = ?", (status,)
        return [Approval(*row) for row in self._rows(sql + " ORDER BY requested_at, key", args)]

    def decide_approval(
        self, approval: Approval, state: agent_pb2.AgentState, event: agent_pb2.StepEvent
    ) -> None:
        a = approval
        with self._tx(seal=True):
            try:
                self._conn.execute(
                    "UPDATE approvals SET status = ?, decided_by = ?, note = ?, decided_at = ?,"
                    " decided_via = ?, decision_id = ? WHERE key = ? AND status = 'pending'",
                    (a.status, a.decided_by, a.note, time.time(), a.decided_via, a.decision_id, a.key),
                )
            except apsw.ConstraintError:  # the index: one decision, one approval
                raise StoreError(f"decision {a.decision_id!r} was used before", path=str(self.path)) from None
            if self._conn.changes() != 1:
                raise StoreError(f"approval {a.key!r} is not pending", path=str(self.path))
            self._put_state(state)
            self._log_event(event)
            self._append_outbox(event)
