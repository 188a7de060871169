"""The migration methods of the management API (``MigrateAgent``, ``GetMigration``, and the devices'
``PutHandover``, ``GetHandover``, ``CompleteHandover``): a mixin of ``HubService``, over the hub's
``MigrationService``. A scoped caller migrates only an agent on a device in its scope to another in
it, and reads only migrations between such devices."""

from __future__ import annotations

from typing import Any

from edgehub.protocol.errors import ErrorCode
from edgehub.protocol.v1 import hub_pb2

from ..errors import OutOfScope, Refused
from ..services import HubServices
from .access import current

H = hub_pb2


def device_caller(does: str = "hands agents over") -> str:
    """The calling device (its client certificate); PERMISSION_DENIED for anyone else, saying that
    only a device ``does``."""
    device = current().device_id
    if device is None:
        raise Refused(ErrorCode.PERMISSION_DENIED, f"only a device (its client certificate) {does}")
    return device


class MigrationsApi:
    services: HubServices

    async def MigrateAgent(self, request: H.MigrateAgentRequest, context: Any) -> H.Migration:
        me, scopes = current(), self.services.scopes
        await scopes.agent(me.scope, request.agent_id, "MigrateAgent")
        await scopes.device(me.scope, request.to_device, "MigrateAgent")
        return await self.services.migrations.start(request.agent_id, request.to_device, me.name)

    async def GetMigration(self, request: H.GetMigrationRequest, context: Any) -> H.Migration:
        scope, scopes = current().scope, self.services.scopes
        await scopes.agent(scope, request.agent_id, "GetMigration")
        found = await self.services.migrations.latest(request.agent_id)
        if not await scopes.holds_devices(scope, (found.source_device, found.target_device)):
            why = f"agent {request.agent_id}'s latest migration involves a device outside your scope"
            raise OutOfScope(f"GetMigration: {why} ({scope})", "", str(scope))
        return found

    async def PutHandover(self, request: H.PutHandoverRequest, context: Any) -> H.Migration:
        return await self.services.migrations.put_handover(device_caller(), request)

    async def GetHandover(self, request: H.GetHandoverRequest, context: Any) -> H.Handover:
        return await self.services.migrations.get_handover(device_caller(), request)

    async def CompleteHandover(self, request: H.CompleteHandoverRequest, context: Any) -> H.Migration:
        return await self.services.migrations.complete(device_caller(), request)
