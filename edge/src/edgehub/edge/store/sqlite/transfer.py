"""Moving an agent between devices: its export at a step boundary, the MIGRATED mark that keeps this
device from running it again, and the import of a handed-over agent at a new epoch."""

from __future__ import annotations

import time

from edgehub.protocol.v1 import agent_pb2

from ...errors import StoreError
from ..base import Approval
from .approvals import APPROVAL_COLS, Approvals
from .sessions import Sessions

BUNDLE_SCHEMA_VERSION = 1
"""``AgentBundle.schema_version`` this store writes and reads."""


def _record_of(a: Approval) -> agent_pb2.ApprovalRecord:
    """An approval as it travels in an ``AgentBundle`` (the agent id is the bundle's)."""
    return agent_pb2.ApprovalRecord(
        key=a.key,
        step=a.step,
        tool=a.tool,
        args_json=a.args_json,
        proposal_json=a.proposal_json,
        rule=a.rule,
        reason=a.reason,
        status=a.status,
        decided_by=a.decided_by,
        note=a.note,
        requested_at=a.requested_at or 0.0,
        decided_at=a.decided_at or 0.0,
        decided_via=a.decided_via,
        decision_id=a.decision_id,
        policy_version=a.policy_version,
        policy_digest=a.policy_digest,
    )


def _approval_of(r: agent_pb2.ApprovalRecord, agent_id: str) -> Approval:
    return Approval(
        r.key,
        agent_id,
        r.step,
        r.tool,
        r.args_json,
        r.proposal_json,
        r.rule,
        r.reason,
        r.status,
        r.decided_by,
        r.note,
        r.requested_at,
        r.decided_at or None,
        r.decided_via,
        r.decision_id,
        r.policy_version,
        r.policy_digest,
    )


class Transfer(Approvals, Sessions):
    """An agent's whole state across the tables: agent, turns, notes, approvals."""

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
            f"SELECT {APPROVAL_COLS} FROM approvals WHERE agent_id = ? ORDER BY key", (agent_id,)
        ):
            bundle.approvals.append(_record_of(Approval(*a)))
        bundle.exported_at.GetCurrentTime()
        return bundle

    def mark_migrated(self, agent_id: str, migration_id: str, target: str) -> agent_pb2.AgentState:
        """The agent left (or is leaving) for ``target``: it is never run here again (not ACTIVE)."""
        with self._tx(seal=True):
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
        with self._tx(seal=True):
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
            for record in bundle.approvals:  # this agent has none here now: each is inserted as it was
                self._put_approval(_approval_of(record, agent_id))
        return True
