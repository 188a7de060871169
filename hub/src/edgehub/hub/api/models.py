"""The model store methods of the management API (``AddModel``, ``ListModels``, ``PushModel``,
``UseModel``, ``RemoveModel``): a mixin of ``HubService`` over the hub's ``FleetModels``. A scoped
caller sends models only to devices in its scope, and may not remove one (the store is the whole
fleet's)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from edgehub.protocol.v1 import hub_pb2, models_pb2

from ..fleet.scopes import ScopeGuard
from ..services import HubServices
from .access import current

H = hub_pb2


class ModelsApi:
    services: HubServices

    async def AddModel(self, request: AsyncIterator[H.AddModelChunk], context: Any) -> models_pb2.ModelInfo:
        return await self.services.models.add(request, current().name)

    async def ListModels(self, request: H.ListModelsRequest, context: Any) -> H.ListModelsResponse:
        return H.ListModelsResponse(models=await self.services.models.list())

    async def PushModel(self, request: H.PushModelRequest, context: Any) -> H.ModelSent:
        me = current()
        return await self.services.models.push(request, me.name, me.scope)

    async def UseModel(self, request: H.UseModelRequest, context: Any) -> H.ModelSent:
        me = current()
        return await self.services.models.use(request, me.name, me.scope)

    async def RemoveModel(self, request: H.RemoveModelRequest, context: Any) -> models_pb2.ModelInfo:
        me = current()
        ScopeGuard.fleet(me.scope, "RemoveModel")  # other scopes' devices may be about to fetch it
        return await self.services.models.remove(request.model, me.name)
