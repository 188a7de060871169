"""The operator access methods of the management API (``WhoAmI``, ``CreateApiToken``, ``ListApiTokens``,
``DeleteApiTokens``): a mixin of ``HubService``, over the hub's ``ApiTokens``."""

from __future__ import annotations

import logging
from typing import Any

from edgehub.protocol.v1 import hub_pb2

from ..services import HubServices
from .access import current

H = hub_pb2
log = logging.getLogger("edgehub.hub.api.tokens")


class TokensApi:
    services: HubServices

    async def WhoAmI(self, request: H.WhoAmIRequest, context: Any) -> H.Principal:
        me = current()
        return H.Principal(name=me.name, role=me.role)  # type: ignore[arg-type]

    async def CreateApiToken(self, request: H.CreateApiTokenRequest, context: Any) -> H.ApiToken:
        return await self.services.tokens.create(request.name, request.role, current().name, request.ttl_s)

    async def ListApiTokens(self, request: H.ListApiTokensRequest, context: Any) -> H.ListApiTokensResponse:
        return H.ListApiTokensResponse(tokens=await self.services.tokens.list())

    async def DeleteApiTokens(
        self, request: H.DeleteApiTokensRequest, context: Any
    ) -> H.DeleteApiTokensResponse:
        deleted = await self.services.tokens.delete(request.name)
        log.warning("%d API tokens of %s deleted by %s", deleted, request.name, current().name)
        return H.DeleteApiTokensResponse(deleted=deleted)
