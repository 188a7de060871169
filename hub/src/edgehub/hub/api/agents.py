"""The agent methods of the management API (``ListAgents``, ``GetAgent``, ``StartAgent``, ``StopAgent``,
``DecideApproval``, ``TraceAgent``): a mixin of ``HubService``, over the hub's ``AgentRegistry``,
``Commands`` and ``Traces``."""

from __future__ import annotations

from typing import Any

from edgehub.protocol.v1 import hub_pb2

from ..services import HubServices
from .access import current

H = hub_pb2


class AgentsApi:
    services: HubServices

    async def ListAgents(self, request: H.ListAgentsRequest, context: Any) -> H.ListAgentsResponse:
        records = await self.services.agents.all()
        if request.device_id:
            records = [r for r in records if r.device_id == request.device_id]
        return H.ListAgentsResponse(agents=records)

    async def GetAgent(self, request: H.GetAgentRequest, context: Any) -> H.AgentRecord:
        return await self.services.agents.require(request.agent_id)

    async def StartAgent(self, request: H.StartAgentRequest, context: Any) -> H.StartAgentResponse:
        return await self.services.commands.start_agent(request, current().name)

    async def StopAgent(self, request: H.StopAgentRequest, context: Any) -> H.CommandAccepted:
        return await self.services.commands.stop_agent(request, current().name)

    async def DecideApproval(self, request: H.DecideApprovalRequest, context: Any) -> H.CommandAccepted:
        return await self.services.commands.decide(request, current().name)

    async def TraceAgent(self, request: H.TraceAgentRequest, context: Any) -> H.TraceAgentResponse:
        return await self.services.traces.page(request.agent_id, request.page_size, request.page_token)
