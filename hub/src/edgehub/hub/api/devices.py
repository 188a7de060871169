"""The device methods of the management API (``ListDevices``, ``GetDevice``, ``DrainDevice``): a mixin
of ``HubService``, over the hub's ``DeviceRegistry`` and ``Commands``. A scoped caller sees and drains
only the devices in its scope (``ScopeGuard``); each device is shown with the labels the hub assigned
it."""

from __future__ import annotations

from typing import Any

from edgehub.protocol.errors import ErrorCode
from edgehub.protocol.v1 import hub_pb2

from ..errors import Refused
from ..services import HubServices
from .access import current

H = hub_pb2


class DevicesApi:
    services: HubServices

    async def ListDevices(self, request: H.ListDevicesRequest, context: Any) -> H.ListDevicesResponse:
        scope, scopes = current().scope, self.services.scopes
        shown = [d for d in await self.services.devices.all() if scopes.sees(scope, d.device_id)]
        for d in shown:
            d.labels.update(scopes.listed(d.device_id))
        return H.ListDevicesResponse(devices=shown)

    async def GetDevice(self, request: H.GetDeviceRequest, context: Any) -> H.Device:
        me = current()
        if me.device_id is not None and me.device_id != request.device_id:
            raise Refused(ErrorCode.PERMISSION_DENIED, f"{me.name} may only read itself")
        await self.services.scopes.device(me.scope, request.device_id, "GetDevice")
        found = await self.services.devices.get(request.device_id)
        if found is None:
            raise Refused(ErrorCode.NOT_FOUND, f"device {request.device_id!r} never reported")
        found.labels.update(await self.services.scopes.labels(request.device_id))
        return found

    async def DrainDevice(self, request: H.DrainDeviceRequest, context: Any) -> H.CommandAccepted:
        me = current()
        await self.services.scopes.device(me.scope, request.device_id, "DrainDevice")
        return await self.services.commands.drain(request, me.name)
