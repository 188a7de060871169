"""The management API (gRPC ``edgehub.v1.HubService``), with server reflection and the standard
health service. Reads come from the registries in JetStream KV and the events stream; actions are
commands to devices (``edgehub.sync.commands``).

Not yet: TLS, operator authentication and roles (issue 4's identity part); bind to loopback until then.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from edgehub.protocol import subjects
from edgehub.protocol.v1 import commands_pb2, events_pb2, hub_pb2, hub_pb2_grpc
from edgehub.sync.commands import new_command, send_command

from .registry import AgentRegistry, DeviceRegistry

H = hub_pb2
MAX_PAGE = 1000


def _agent(r: dict[str, Any]) -> hub_pb2.AgentRecord:
    return H.AgentRecord(
        agent_id=str(r["agent_id"]),
        device_id=str(r["device_id"]),
        epoch=int(r.get("epoch", 0)),
        status=str(r["status"]),
        step=int(r.get("step", 0)),
        last_event=str(r.get("last_event", "")),
        detail=str(r.get("detail", "")),
        updated_at=float(r.get("updated_at", 0)),
    )


class HubService(hub_pb2_grpc.HubServiceServicer):
    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self.agents = AgentRegistry(js)
        self.devices = DeviceRegistry(js)

    async def ListDevices(self, request: H.ListDevicesRequest, context: Any) -> H.ListDevicesResponse:
        out = H.ListDevicesResponse()
        for d in await self.devices.all():
            out.devices.add(
                device_id=str(d["device_id"]),
                online=bool(d["online"]),
                last_seen_s=float(d["last_seen_s"]),
                version=str(d.get("version", "")),
                load=float(d.get("load", 0)),
                agents_running=[str(a) for a in d.get("agents_running", [])],
                outbox_depth=int(d.get("outbox_depth", 0)),
                state=str(d.get("state", "")),
            )
        return out

    async def ListAgents(self, request: H.ListAgentsRequest, context: Any) -> H.ListAgentsResponse:
        records = await self.agents.all()
        if request.device_id:
            records = [r for r in records if r["device_id"] == request.device_id]
        return H.ListAgentsResponse(agents=[_agent(r) for r in records])

    async def _record(self, agent_id: str, context: Any) -> dict[str, Any]:
        if not agent_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "agent_id is required")
        record = await self.agents.get(agent_id)
        if record is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no agent {agent_id!r} has reported to the hub")
        assert record is not None
        return record

    async def GetAgent(self, request: H.GetAgentRequest, context: Any) -> H.AgentRecord:
        return _agent(await self._record(request.agent_id, context))

    async def _send(self, cmd: commands_pb2.Command, context: Any) -> None:
        try:
            await send_command(self.js, cmd)
        except Exception as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"could not queue the command: {exc}")

    async def StartAgent(self, request: H.StartAgentRequest, context: Any) -> H.StartAgentResponse:
        if not request.device_id or not request.goal.strip():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "device_id and goal are required")
        cmd = new_command(request.device_id, request.issued_by or "api")
        cmd.start_agent.agent_id = request.agent_id or f"agent-{uuid.uuid4().hex[:12]}"
        cmd.start_agent.goal = request.goal
        cmd.start_agent.budget.CopyFrom(request.budget)
        await self._send(cmd, context)
        return H.StartAgentResponse(agent_id=cmd.start_agent.agent_id, command_id=cmd.command_id)

    async def _device_of(self, agent_id: str, device_id: str, context: Any) -> str:
        return device_id or str((await self._record(agent_id, context))["device_id"])

    async def StopAgent(self, request: H.StopAgentRequest, context: Any) -> H.CommandAccepted:
        device = await self._device_of(request.agent_id, request.device_id, context)
        cmd = new_command(device, request.issued_by or "api")
        cmd.stop_agent.agent_id = request.agent_id
        cmd.stop_agent.reason = request.reason or "stopped through the hub API"
        await self._send(cmd, context)
        return H.CommandAccepted(command_id=cmd.command_id, device_id=device)

    async def DecideApproval(self, request: H.DecideApprovalRequest, context: Any) -> H.CommandAccepted:
        if "/" not in request.key or not request.by.strip():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "key (AGENT/STEP) and by are required")
        device = await self._device_of(request.key.rsplit("/", 1)[0], request.device_id, context)
        cmd = new_command(device, request.by)
        d = cmd.decide_approval
        d.key, d.approve, d.by, d.note = request.key, request.approve, request.by, request.note
        await self._send(cmd, context)
        return H.CommandAccepted(command_id=cmd.command_id, device_id=device)

    async def TraceAgent(self, request: H.TraceAgentRequest, context: Any) -> H.TraceAgentResponse:
        await self._record(request.agent_id, context)
        size = min(request.page_size or 100, MAX_PAGE)
        try:
            start = int(request.page_token or "1")
        except ValueError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad page_token")
        sub = await self.js.pull_subscribe(
            subjects.agent_events(request.agent_id),
            stream=subjects.EVENTS_STREAM,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=start,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=30,
            ),
        )
        out = H.TraceAgentResponse()
        last = 0
        try:
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                for msg in await sub.fetch(size, timeout=0.5):
                    out.events.append(events_pb2.EdgeEvent.FromString(msg.data).step)
                    last = msg.metadata.sequence.stream
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if len(out.events) == size:
            out.next_page_token = str(last + 1)
        return out


async def serve(js: JetStreamContext, addr: str) -> tuple[grpc.aio.Server, int]:
    """Start the API (plus health and reflection) on ``addr`` ("127.0.0.1:0" for any port)."""
    server = grpc.aio.server()
    hub_pb2_grpc.add_HubServiceServicer_to_server(HubService(js), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (
        H.DESCRIPTOR.services_by_name["HubService"].full_name,
        reflection.SERVICE_NAME,
        health.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server)
    port = server.add_insecure_port(addr)
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set(names[0], health_pb2.HealthCheckResponse.SERVING)
    return server, port
