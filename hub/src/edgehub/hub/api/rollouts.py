"""The parity-gated rollout methods of the management API (``StartRollout``, ``RolloutStatus``,
``RollbackRollout``): a mixin of ``HubService`` over the hub's ``RolloutService``. A scoped caller
starts, sees and rolls back only rollouts whose devices are all in its scope."""

from __future__ import annotations

from typing import Any

from edgehub.protocol.v1 import hub_pb2, models_pb2

from ..services import HubServices
from .access import current

H = hub_pb2


class RolloutsApi:
    services: HubServices

    async def StartRollout(self, request: H.StartRolloutRequest, context: Any) -> models_pb2.RolloutRecord:
        me = current()
        return await self.services.rollouts.start(request, me.name, me.scope)

    async def RolloutStatus(self, request: H.RolloutStatusRequest, context: Any) -> H.RolloutStatusResponse:
        return await self.services.rollouts.status(request.rollout_id, current().scope)

    async def RollbackRollout(
        self, request: H.RollbackRolloutRequest, context: Any
    ) -> models_pb2.RolloutRecord:
        me = current()
        return await self.services.rollouts.rollback(request.rollout_id, me.name, me.scope)
