"""The goal methods of the management API (``SubmitGoal``, ``GetGoal``, ``ListGoals``, ``DecideTask``,
``CancelGoal``): a mixin of ``HubService``, over the hub's ``GoalService``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from edgehub.protocol.v1 import hub_pb2

from ..errors import GoalError
from ..goals.service import GoalService
from ..goals.service import to_proto as goal_proto
from .access import current

H = hub_pb2


class GoalsApi:
    goals: GoalService | None
    """Planning and dispatch (None: this API runs without the daemon's planner)."""

    async def _goals(self, step: Callable[[GoalService], Awaitable[dict[str, Any]]], context: Any) -> H.Goal:
        if self.goals is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this hub runs no planner")
        assert self.goals is not None
        try:
            return goal_proto(await step(self.goals))
        except GoalError as exc:
            await context.abort(getattr(grpc.StatusCode, exc.code), exc.message)
            raise  # not reached: abort raises

    async def SubmitGoal(self, request: H.SubmitGoalRequest, context: Any) -> H.Goal:
        b = request.budget
        budget = {  # zero: the hub's default
            "max_tokens": b.max_tokens,
            "max_wall_seconds": b.max_wall_seconds,
            "max_tool_calls": b.max_tool_calls,
            "max_retries": b.max_retries,
        }
        return await self._goals(
            lambda g: g.submit(
                request.text,
                by=current().name,
                labels=dict(request.labels),
                budget={k: v for k, v in budget.items() if v},
                plan_json=request.plan_json,
                approve_tools=list(request.approve_tools),
            ),
            context,
        )

    async def GetGoal(self, request: H.GetGoalRequest, context: Any) -> H.Goal:
        return await self._goals(lambda g: g.get(request.goal_id), context)

    async def ListGoals(self, request: H.ListGoalsRequest, context: Any) -> H.ListGoalsResponse:
        if self.goals is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this hub runs no planner")
        assert self.goals is not None
        out = H.ListGoalsResponse()
        for record in await self.goals.all():
            out.goals.append(goal_proto(record, full=False))
        return out

    async def DecideTask(self, request: H.DecideTaskRequest, context: Any) -> H.Goal:
        by = current().name
        return await self._goals(
            lambda g: g.decide(request.goal_id, request.task_id, request.approve, by, request.note), context
        )

    async def CancelGoal(self, request: H.CancelGoalRequest, context: Any) -> H.Goal:
        by = current().name
        return await self._goals(lambda g: g.cancel(request.goal_id, by, request.reason), context)
