"""The device identity methods of the management API (``CreateEnrollmentToken``, ``Enroll``,
``RevokeDevice``, ``SetDeviceLabels``, ``GetHubKey``): a mixin of ``HubService``, over the hub's
``DeviceIdentity``.
A scoped admin enrolls, relabels and revokes only devices in its scope, and labels them only into it
(``fleet/scopes.py``)."""

from __future__ import annotations

from typing import Any

from edgehub.protocol.v1 import hub_pb2

from ..errors import OutOfScope
from ..fleet.scopes import check_labels, describe_labels
from ..services import HubServices
from .access import current

H = hub_pb2


class EnrollmentApi:
    services: HubServices

    async def CreateEnrollmentToken(
        self, request: H.CreateEnrollmentTokenRequest, context: Any
    ) -> H.EnrollmentToken:
        me = current()
        if not me.scope.fleet_wide and await self.services.devices.get(request.device_id) is not None:
            # a device that reports without a credentials record is not a new one to take over
            await self.services.scopes.device(me.scope, request.device_id, "CreateEnrollmentToken")
        return await self.services.identity.enrollment_token(
            request.device_id, request.ttl_s, me.name, dict(request.labels), me.scope
        )

    async def Enroll(self, request: H.EnrollRequest, context: Any) -> H.EnrollResponse:
        return await self.services.identity.enroll(request)

    async def GetHubKey(self, request: H.GetHubKeyRequest, context: Any) -> H.HubKey:
        return self.services.identity.hub_key

    async def RevokeDevice(self, request: H.RevokeDeviceRequest, context: Any) -> H.RevokeDeviceResponse:
        me = current()
        await self.services.scopes.device(me.scope, request.device_id, "RevokeDevice")
        reason = request.reason or "revoked through the hub API"
        return await self.services.identity.revoke(request.device_id, me.name, reason)

    async def SetDeviceLabels(self, request: H.SetDeviceLabelsRequest, context: Any) -> H.DeviceLabels:
        me = current()
        await self.services.scopes.device(me.scope, request.device_id, "SetDeviceLabels")
        labels = check_labels(request.labels)
        if not me.scope.covers(request.device_id, labels):
            shown = describe_labels(labels) or "no labels"
            why = f"device {request.device_id} with {shown} would be outside your scope ({me.scope})"
            raise OutOfScope(f"SetDeviceLabels: {why}", request.device_id, str(me.scope))
        return await self.services.identity.relabel(request.device_id, labels, me.name)
