"""The goal methods of the management API (``SubmitGoal``, ``GetGoal``, ``ListGoals``, ``DecideTask``,
``CancelGoal``): a mixin of ``HubService``, over the hub's ``GoalService``. A goal is returned as the
record the hub keeps (``edgehub.v1.Goal``); ``ListGoals`` returns summaries. A refusal is a
``GoalError`` the API's one mapping (``api/errors.py``) turns into the call's status.

A goal carries the scope of the token that submitted it: its tasks run only on devices in it, and a
scoped caller sees and changes only goals whose scope is within its own."""

from __future__ import annotations

from typing import Any

from edgehub.protocol.errors import ErrorCode
from edgehub.protocol.v1 import goals_pb2

from ..errors import Refused
from ..fleet.scopes import Scope, ScopeGuard
from ..goals.record import summary
from ..goals.service import GoalService
from .access import current

G = goals_pb2


class GoalsApi:
    goals: GoalService | None
    """Planning and dispatch (None: this API runs without the daemon's planner)."""

    @property
    def _planner(self) -> GoalService:
        if self.goals is None:
            raise Refused(ErrorCode.FAILED_PRECONDITION, "this hub runs no planner")
        return self.goals

    async def _goal(self, goal_id: str, what: str) -> G.Goal:
        """The goal, when the caller's scope holds it (``OutOfScope`` else)."""
        record = await self._planner.get(goal_id)
        ScopeGuard.holds(current().scope, Scope.from_proto(record.scope), f"{what}: goal {goal_id}")
        return record

    async def SubmitGoal(self, request: G.SubmitGoalRequest, context: Any) -> G.Goal:
        me = current()
        return await self._planner.submit(
            request.text,
            by=me.name,
            labels=dict(request.labels),
            budget=request.budget,
            plan=request.plan if request.HasField("plan") else None,
            approve_tools=list(request.approve_tools),
            scope=None if me.scope.fleet_wide else me.scope.to_proto(),
        )

    async def GetGoal(self, request: G.GetGoalRequest, context: Any) -> G.Goal:
        return await self._goal(request.goal_id, "GetGoal")

    async def ListGoals(self, request: G.ListGoalsRequest, context: Any) -> G.ListGoalsResponse:
        scope = current().scope
        shown = [r for r in await self._planner.all() if Scope.from_proto(r.scope).within(scope)]
        return G.ListGoalsResponse(goals=[summary(record) for record in shown])

    async def DecideTask(self, request: G.DecideTaskRequest, context: Any) -> G.Goal:
        await self._goal(request.goal_id, "DecideTask")
        return await self._planner.decide(
            request.goal_id, request.task_id, request.approve, current().name, request.note
        )

    async def CancelGoal(self, request: G.CancelGoalRequest, context: Any) -> G.Goal:
        await self._goal(request.goal_id, "CancelGoal")
        return await self._planner.cancel(request.goal_id, current().name, request.reason)
