"""The agent methods of the management API (``ListAgents``, ``GetAgent``, ``StartAgent``, ``StopAgent``,
``DecideApproval``, ``TraceAgent``): a mixin of ``HubService``, over the hub's ``AgentRegistry``,
``Commands`` and ``Traces``. A scoped caller reaches only agents on devices in its scope, and sends
commands only to such devices (``ScopeGuard``)."""

from __future__ import annotations

from typing import Any

from edgehub.protocol.errors import ErrorCode
from edgehub.protocol.v1 import hub_pb2

from ..errors import Refused
from ..services import HubServices
from .access import current

H = hub_pb2


class AgentsApi:
    services: HubServices

    async def ListAgents(self, request: H.ListAgentsRequest, context: Any) -> H.ListAgentsResponse:
        scope, scopes = current().scope, self.services.scopes
        records = [r for r in await self.services.agents.all() if scopes.sees(scope, r.device_id)]
        if request.device_id:
            records = [r for r in records if r.device_id == request.device_id]
        return H.ListAgentsResponse(agents=records)

    async def GetAgent(self, request: H.GetAgentRequest, context: Any) -> H.AgentRecord:
        record = await self.services.scopes.agent(current().scope, request.agent_id, "GetAgent")
        return record if record is not None else await self.services.agents.require(request.agent_id)

    async def StartAgent(self, request: H.StartAgentRequest, context: Any) -> H.StartAgentResponse:
        me, scopes = current(), self.services.scopes
        await scopes.device(me.scope, request.device_id, "StartAgent")
        if request.agent_id and not me.scope.fleet_wide:  # taken elsewhere: say so, not where
            owner = await self.services.agents.get(request.agent_id)
            if owner is not None and not await scopes.holds_devices(me.scope, (owner.device_id,)):
                why = f"StartAgent: agent id {request.agent_id} is taken; choose another"
                raise Refused(ErrorCode.FAILED_PRECONDITION, why)
        return await self.services.commands.start_agent(request, me.name)

    async def StopAgent(self, request: H.StopAgentRequest, context: Any) -> H.CommandAccepted:
        me = current()
        await self.services.scopes.command(me.scope, request.agent_id, request.device_id, "StopAgent")
        return await self.services.commands.stop_agent(request, me.name)

    async def DecideApproval(self, request: H.DecideApprovalRequest, context: Any) -> H.CommandAccepted:
        me = current()
        agent_id = request.key.rpartition("/")[0]
        await self.services.scopes.command(me.scope, agent_id, request.device_id, "DecideApproval")
        return await self.services.commands.decide(request, me.name)

    async def TraceAgent(self, request: H.TraceAgentRequest, context: Any) -> H.TraceAgentResponse:
        await self.services.scopes.agent(current().scope, request.agent_id, "TraceAgent")
        return await self.services.traces.page(request.agent_id, request.page_size, request.page_token)
