"""The operator access methods of the management API (``WhoAmI``, ``CreateApiToken``, ``ListApiTokens``,
``DeleteApiTokens``): a mixin of ``HubService``, over the hub's ``ApiTokens``. A scoped admin creates,
lists and deletes only tokens whose scope is within its own (never one without a scope: no
escalation)."""

from __future__ import annotations

import logging
from typing import Any

from edgehub.protocol.v1 import hub_pb2

from ..fleet.scopes import Scope, ScopeGuard
from ..services import HubServices
from .access import current

H = hub_pb2
log = logging.getLogger("edgehub.hub.api.tokens")


class TokensApi:
    services: HubServices

    async def WhoAmI(self, request: H.WhoAmIRequest, context: Any) -> H.Principal:
        me = current()
        return H.Principal(name=me.name, role=me.role, scope=me.scope.to_proto())  # type: ignore[arg-type]

    async def CreateApiToken(self, request: H.CreateApiTokenRequest, context: Any) -> H.ApiToken:
        me = current()
        scope = Scope.checked(request.scope)
        ScopeGuard.holds(me.scope, scope, "CreateApiToken: the new token")
        made = await self.services.tokens.create(request.name, request.role, me.name, request.ttl_s, scope)
        log.warning("API token of %s (scope: %s) created by %s", request.name, scope, me.name)
        return made

    async def ListApiTokens(self, request: H.ListApiTokensRequest, context: Any) -> H.ListApiTokensResponse:
        return H.ListApiTokensResponse(tokens=await self.services.tokens.list(within=current().scope))

    async def DeleteApiTokens(
        self, request: H.DeleteApiTokensRequest, context: Any
    ) -> H.DeleteApiTokensResponse:
        me = current()
        deleted = await self.services.tokens.delete(request.name, within=me.scope)
        log.warning("%d API tokens of %s deleted by %s", deleted, request.name, me.name)
        return H.DeleteApiTokensResponse(deleted=deleted)
