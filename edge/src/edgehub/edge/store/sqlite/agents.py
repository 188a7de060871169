"""Agents: each agent's latest checkpointed state, one row per agent."""

from __future__ import annotations

import time

import apsw

from edgehub.protocol.v1 import agent_pb2

from ...errors import AgentNotFound, StoreError
from .connection import Connection


class AgentRows(Connection):
    """The ``agents`` table."""

    def create_agent(self, state: agent_pb2.AgentState) -> None:
        now = time.time()
        try:
            with self._tx(seal=True):
                self._conn.execute(
                    "INSERT INTO agents(agent_id, status, state, created_at, updated_at) VALUES (?,?,?,?,?)",
                    (state.agent_id, state.status, state.SerializeToString(), now, now),
                )
        except apsw.ConstraintError:
            raise StoreError(f"agent {state.agent_id!r} already exists", path=str(self.path)) from None

    def has_agent(self, agent_id: str) -> bool:
        return self._scalar("SELECT 1 FROM agents WHERE agent_id = ?", (agent_id,)) is not None

    def load_agent(self, agent_id: str) -> agent_pb2.AgentState:
        blob = self._scalar("SELECT state FROM agents WHERE agent_id = ?", (agent_id,))
        if blob is None:
            raise AgentNotFound(agent_id)
        return agent_pb2.AgentState.FromString(blob)

    def list_agents(self, statuses: tuple[int, ...] = ()) -> list[agent_pb2.AgentState]:
        sql = "SELECT state FROM agents"
        if statuses:
            sql += f" WHERE status IN ({','.join('?' * len(statuses))})"
        rows = self._rows(sql + " ORDER BY created_at, agent_id", tuple(statuses))
        return [agent_pb2.AgentState.FromString(r[0]) for r in rows]

    def update_agent(self, state: agent_pb2.AgentState) -> None:
        with self._tx():
            self._put_state(state)

    def _put_state(self, state: agent_pb2.AgentState) -> None:
        """Overwrite the agent's row (inside the caller's transaction); ``AgentNotFound`` without one."""
        self._conn.execute(
            "UPDATE agents SET status = ?, state = ?, updated_at = ? WHERE agent_id = ?",
            (state.status, state.SerializeToString(), time.time(), state.agent_id),
        )
        if self._conn.changes() != 1:
            raise AgentNotFound(state.agent_id)
