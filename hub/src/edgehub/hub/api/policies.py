"""The fleet policy methods of the management API (``PushPolicy``, ``RollbackPolicy``,
``PolicyStatus``, and the devices' ``GetPolicy``): a mixin of ``HubService`` over the hub's
``FleetPolicies``. A scoped caller pushes only to devices in its scope and sees only them; a device
reads only its own bundle (its client certificate names it)."""

from __future__ import annotations

from typing import Any

from edgehub.protocol.errors import ErrorCode
from edgehub.protocol.v1 import hub_pb2, policy_pb2

from ..errors import Refused
from ..services import HubServices
from .access import current

H = hub_pb2


class PoliciesApi:
    services: HubServices

    async def PushPolicy(self, request: H.PushPolicyRequest, context: Any) -> policy_pb2.PolicyPush:
        me = current()
        return await self.services.policies.push(request, me.name, me.scope)

    async def RollbackPolicy(self, request: H.RollbackPolicyRequest, context: Any) -> policy_pb2.PolicyPush:
        me = current()
        return await self.services.policies.rollback(request, me.name, me.scope)

    async def PolicyStatus(self, request: H.PolicyStatusRequest, context: Any) -> H.PolicyStatusResponse:
        twins = {d.device_id: d for d in await self.services.devices.all()}
        return await self.services.policies.status(current().scope, twins)

    async def GetPolicy(self, request: H.GetPolicyRequest, context: Any) -> policy_pb2.SignedPolicy:
        device = current().device_id
        if device is None:
            raise Refused(
                ErrorCode.PERMISSION_DENIED, "only a device (its client certificate) reads its bundle"
            )
        return await self.services.policies.assignment(device)
