"""The device identity methods of the management API (``CreateEnrollmentToken``, ``Enroll``,
``RevokeDevice``): a mixin of ``HubService``, over the hub's ``DeviceIdentity``."""

from __future__ import annotations

from typing import Any

from edgehub.protocol.v1 import hub_pb2

from ..services import HubServices
from .access import current

H = hub_pb2


class EnrollmentApi:
    services: HubServices

    async def CreateEnrollmentToken(
        self, request: H.CreateEnrollmentTokenRequest, context: Any
    ) -> H.EnrollmentToken:
        return await self.services.identity.enrollment_token(request.device_id, request.ttl_s, current().name)

    async def Enroll(self, request: H.EnrollRequest, context: Any) -> H.EnrollResponse:
        return await self.services.identity.enroll(request)

    async def RevokeDevice(self, request: H.RevokeDeviceRequest, context: Any) -> H.RevokeDeviceResponse:
        reason = request.reason or "revoked through the hub API"
        return await self.services.identity.revoke(request.device_id, current().name, reason)
