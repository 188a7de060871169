"""``GetDeviceRecovery``: a device reads what the hub holds of it (its applied outbox sequence, its
agents and the steps the hub saw), to detect a store that went back in time and recover from it. A
mixin of ``HubService``; the device is the one its client certificate names."""

from __future__ import annotations

from typing import Any

from edgehub.protocol.v1 import hub_pb2

from ..services import HubServices
from .migrations import device_caller

H = hub_pb2


class RecoveryApi:
    services: HubServices

    async def GetDeviceRecovery(self, request: H.GetDeviceRecoveryRequest, context: Any) -> H.DeviceRecovery:
        device = device_caller("reads what the hub holds for its recovery")
        return await self.services.recovery.of(device, request)
