"""The migration methods of the management API (``MigrateAgent``, ``GetMigration``, and the devices'
``PutHandover``, ``GetHandover``, ``CompleteHandover``): a mixin of ``HubService``, over the hub's
``MigrationService``."""

from __future__ import annotations

from typing import Any

from edgehub.protocol.errors import ErrorCode
from edgehub.protocol.v1 import hub_pb2

from ..errors import Refused
from ..services import HubServices
from .access import current

H = hub_pb2


def _device_caller() -> str:
    """The calling device (its client certificate); PERMISSION_DENIED for anyone else."""
    device = current().device_id
    if device is None:
        raise Refused(ErrorCode.PERMISSION_DENIED, "only a device (its client certificate) hands agents over")
    return device


class MigrationsApi:
    services: HubServices

    async def MigrateAgent(self, request: H.MigrateAgentRequest, context: Any) -> H.Migration:
        return await self.services.migrations.start(request.agent_id, request.to_device, current().name)

    async def GetMigration(self, request: H.GetMigrationRequest, context: Any) -> H.Migration:
        return await self.services.migrations.latest(request.agent_id)

    async def PutHandover(self, request: H.PutHandoverRequest, context: Any) -> H.Migration:
        return await self.services.migrations.put_handover(_device_caller(), request)

    async def GetHandover(self, request: H.GetHandoverRequest, context: Any) -> H.Handover:
        return await self.services.migrations.get_handover(_device_caller(), request)

    async def CompleteHandover(self, request: H.CompleteHandoverRequest, context: Any) -> H.Migration:
        return await self.services.migrations.complete(_device_caller(), request)
