"""The goal methods of the management API (``SubmitGoal``, ``GetGoal``, ``ListGoals``, ``DecideTask``,
``CancelGoal``): a mixin of ``HubService``, over the hub's ``GoalService``. A goal is returned as the
record the hub keeps (``edgehub.v1.Goal``); ``ListGoals`` returns summaries."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import grpc

from edgehub.protocol.errors import EdgehubError
from edgehub.protocol.v1 import goals_pb2

from ..errors import GoalError
from ..goals.record import summary
from ..goals.service import GoalService
from .access import current

G = goals_pb2


async def abort_with(context: Any, exc: EdgehubError) -> NoReturn:
    """End the call with the gRPC status named as the error's code (``ErrorCode`` uses gRPC's names).
    To be replaced by the API's one mapping of errors (``api/errors.py``)."""
    await context.abort(grpc.StatusCode[exc.code.name], exc.message)
    raise AssertionError("not reached: abort raises")


class GoalsApi:
    goals: GoalService | None
    """Planning and dispatch (None: this API runs without the daemon's planner)."""

    async def _service(self, context: Any) -> GoalService:
        if self.goals is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this hub runs no planner")
        assert self.goals is not None
        return self.goals

    async def _goals(self, step: Callable[[GoalService], Awaitable[G.Goal]], context: Any) -> G.Goal:
        goals = await self._service(context)
        try:
            return await step(goals)
        except GoalError as exc:
            await abort_with(context, exc)

    async def SubmitGoal(self, request: G.SubmitGoalRequest, context: Any) -> G.Goal:
        by = current().name
        return await self._goals(
            lambda g: g.submit(
                request.text,
                by=by,
                labels=dict(request.labels),
                budget=request.budget,
                plan=request.plan if request.HasField("plan") else None,
                approve_tools=list(request.approve_tools),
            ),
            context,
        )

    async def GetGoal(self, request: G.GetGoalRequest, context: Any) -> G.Goal:
        return await self._goals(lambda g: g.get(request.goal_id), context)

    async def ListGoals(self, request: G.ListGoalsRequest, context: Any) -> G.ListGoalsResponse:
        goals = await self._service(context)
        return G.ListGoalsResponse(goals=[summary(record) for record in await goals.all()])

    async def DecideTask(self, request: G.DecideTaskRequest, context: Any) -> G.Goal:
        by = current().name
        return await self._goals(
            lambda g: g.decide(request.goal_id, request.task_id, request.approve, by, request.note), context
        )

    async def CancelGoal(self, request: G.CancelGoalRequest, context: Any) -> G.Goal:
        by = current().name
        return await self._goals(lambda g: g.cancel(request.goal_id, by, request.reason), context)
