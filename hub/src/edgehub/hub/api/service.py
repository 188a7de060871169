"""The management API (gRPC ``edgehub.v1.HubService`` over TLS), with server reflection and the
standard health service. Reads come from the registries in JetStream KV and the events stream;
actions are commands to devices (``edgehub.sync.commands``), issued in the authenticated caller's
name. Who may call what is ``access``; enrollment mints a device's NATS credentials (``Trust``) and
client certificate (``CertificateAuthority``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from edgehub.protocol import subjects
from edgehub.protocol.v1 import commands_pb2, events_pb2, hub_pb2, hub_pb2_grpc
from edgehub.sync.auth import AuthError, Trust, inbox_prefix, is_user_key
from edgehub.sync.commands import new_command, send_command
from edgehub.sync.errors import SyncError
from edgehub.sync.streams import MAX_HANDOVER_BYTES
from edgehub.sync.tls import CertificateAuthority

from ..errors import MigrationError
from ..fleet.migration import MigrationService
from ..fleet.migration import to_proto as migration_proto
from ..fleet.registry import AgentRegistry, DeviceRegistry, DeviceWatcher, fence
from ..goals.service import GoalService
from ..knowledge.dreamer import DreamReport
from ..knowledge.dreamer_service import DreamerService
from ..knowledge.errors import KnowledgeError
from .access import (
    MAX_ENROLL_TTL_S,
    ROLE_NAMES,
    AccessInterceptor,
    Credentials,
    EnrollmentRefused,
    Role,
    Tokens,
    current,
)
from .goals import GoalsApi

H = hub_pb2
log = logging.getLogger("edgehub.hub.api.service")
T = TypeVar("T")
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


_DEVICE_FIELDS = {"device_id", "online", "last_seen_s", "version", "load", "agents_running", "outbox_depth",
                  "state", "draining", "sent_at", "heartbeat_s"}  # fmt: skip


def _device(d: dict[str, Any]) -> hub_pb2.Device:
    return H.Device(
        device_id=str(d["device_id"]),
        online=bool(d["online"]),
        last_seen_s=float(d["last_seen_s"]),
        version=str(d.get("version", "")),
        load=float(d.get("load", 0)),
        agents_running=[str(a) for a in d.get("agents_running", [])],
        outbox_depth=int(d.get("outbox_depth", 0)),
        state=str(d.get("state", "")),
        draining=bool(d.get("draining", False)),
        twin_json=json.dumps({k: v for k, v in d.items() if k not in _DEVICE_FIELDS}, sort_keys=True),
    )


@dataclass
class Identity:
    """What enrollment hands out: NATS credentials, client certificates, where to connect."""

    trust: Trust
    ca: CertificateAuthority
    nats_urls: list[str]
    tokens: Tokens
    credentials: Credentials
    device_api: str = ""
    """Where devices call the API with their client certificate (set by ``serve``)."""
    apply_revocations: Callable[[dict[str, int]], Awaitable[bool]] | None = None
    """Loads revocations into the hub's embedded nats-server (True: done); None: NATS is external."""


def _report(r: DreamReport) -> hub_pb2.ConsolidateReport:
    return H.ConsolidateReport(
        run_id=r.run_id,
        clusters=r.clusters,
        facts_written=r.facts_written,
        episodes_consolidated=r.episodes_consolidated,
        episodes_considered=r.episodes_considered,
        episodes_settled=r.episodes_settled,
        prune=[H.PrunedEpisodes(device_id=d, keys=list(keys)) for d, keys in r.prune.items()],
        rejected=[H.RejectedCluster(cluster=c, reason=why) for c, why in r.rejected],
        recorded=r.recorded,
    )


class HubService(GoalsApi, hub_pb2_grpc.HubServiceServicer):
    def __init__(
        self,
        js: JetStreamContext,
        identity: Identity,
        watcher: DeviceWatcher | None = None,
        dreamer: DreamerService | None = None,
        goals: GoalService | None = None,
    ) -> None:
        self.js = js
        self.identity = identity
        self.agents = AgentRegistry(js)
        self.devices = DeviceRegistry(js)
        self.watcher = watcher
        """The hub's live view of the twins: device reads come from it once it has synced."""
        self.dreamer = dreamer
        """Consolidation (None: this hub runs none)."""
        self.migrations = MigrationService(js, self.agents, self._devices)
        self.goals = goals
        """Planning and dispatch (None: this API runs without the daemon's planner)."""

    async def _devices(self) -> list[dict[str, Any]]:
        live = self.watcher.records() if self.watcher is not None else None
        return live if live is not None else await self.devices.all()

    async def ListDevices(self, request: H.ListDevicesRequest, context: Any) -> H.ListDevicesResponse:
        out = H.ListDevicesResponse()
        for d in await self._devices():
            try:
                out.devices.append(_device(d))
            except (KeyError, TypeError, ValueError):  # a twin a device wrote badly: skipped, not fatal
                log.warning("device twin with bad fields skipped: %.200r", d)
        return out

    async def GetDevice(self, request: H.GetDeviceRequest, context: Any) -> H.Device:
        me = current()
        if me.device_id is not None and me.device_id != request.device_id:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{me.name} may only read itself")
        found = [d for d in await self._devices() if d.get("device_id") == request.device_id]
        if not found:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"device {request.device_id!r} never reported")
        return _device(found[0])

    async def DrainDevice(self, request: H.DrainDeviceRequest, context: Any) -> H.CommandAccepted:
        if not request.device_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "device_id is required")
        cmd = new_command(request.device_id, current().name)
        cmd.drain.reason = request.reason or "drained through the hub API"
        cmd.drain.resume = request.resume
        await self._send(cmd, context)
        return H.CommandAccepted(command_id=cmd.command_id, device_id=request.device_id)

    async def RevokeDevice(self, request: H.RevokeDeviceRequest, context: Any) -> H.RevokeDeviceResponse:
        if not request.device_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "device_id is required")
        identity = self.identity
        reason = request.reason or "revoked through the hub API"
        record = await identity.credentials.revoke(request.device_id, current().name, reason)
        revocations = await identity.credentials.revocations()
        applied = False
        if identity.apply_revocations is not None:
            try:
                applied = await identity.apply_revocations(revocations)
            except SyncError as exc:  # recorded: the next hub start loads it; say so
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"revoked, but NATS did not reload: {exc}")
        log.warning("device %s revoked by %s: %s", request.device_id, current().name, reason)
        return H.RevokeDeviceResponse(
            device_id=request.device_id,
            user_keys=sorted(record["user_keys"]),
            revoked_at=record["revoked_at"],
            applied=applied,
            account_jwt=identity.trust.account_jwt("account", revocations),
        )

    async def WhoAmI(self, request: H.WhoAmIRequest, context: Any) -> H.Principal:
        me = current()
        return H.Principal(name=me.name, role=me.role)  # type: ignore[arg-type]

    async def CreateApiToken(self, request: H.CreateApiTokenRequest, context: Any) -> H.ApiToken:
        if not request.name.strip() or request.role not in (
            Role.ROLE_VIEWER,
            Role.ROLE_OPERATOR,
            Role.ROLE_ADMIN,
        ):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name and a role (viewer|operator|admin)")
        if request.ttl_s < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ttl_s must be 0 (never expires) or more")
        token, expires = await self.identity.tokens.create_api_token(
            request.name, request.role, current().name, request.ttl_s
        )
        return H.ApiToken(token=token, name=request.name, role=request.role, expires_at=expires)

    async def ListApiTokens(self, request: H.ListApiTokensRequest, context: Any) -> H.ListApiTokensResponse:
        return H.ListApiTokensResponse(
            tokens=[
                H.ApiTokenInfo(
                    name=r.get("name", ""),
                    role=ROLE_NAMES.get(r.get("role", ""), Role.ROLE_UNSPECIFIED),
                    created_by=r.get("created_by", ""),
                    created_at=r.get("created_at", 0.0),
                    expires_at=r.get("expires_at") or 0.0,
                    id=key[:12],
                )
                for key, r in await self.identity.tokens.api_tokens()
            ]
        )

    async def DeleteApiTokens(
        self, request: H.DeleteApiTokensRequest, context: Any
    ) -> H.DeleteApiTokensResponse:
        if not request.name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name is required")
        deleted = await self.identity.tokens.delete_api_tokens(request.name)
        if not deleted:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no token named {request.name!r}")
        log.warning("%d API tokens of %s deleted by %s", deleted, request.name, current().name)
        return H.DeleteApiTokensResponse(deleted=deleted)

    async def CreateEnrollmentToken(
        self, request: H.CreateEnrollmentTokenRequest, context: Any
    ) -> H.EnrollmentToken:
        if not request.device_id or request.ttl_s > MAX_ENROLL_TTL_S:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "device_id, and ttl_s at most 30 days")
        token, expires = await self.identity.tokens.create_enrollment(
            request.device_id, request.ttl_s or 3600, current().name
        )
        return H.EnrollmentToken(
            token=token, device_id=request.device_id, expires_at=expires, ca_pem=self.identity.ca.pem.decode()
        )

    async def Enroll(self, request: H.EnrollRequest, context: Any) -> H.EnrollResponse:
        if not request.token or not request.device_id or not is_user_key(request.nats_user_key):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "token, device_id and a user nkey (U...) are required"
            )
        try:  # check the request before spending the token on it
            cert = self.identity.ca.sign_device(request.device_id, request.csr_pem.encode())
            jwt = self.identity.trust.device_jwt(request.device_id, request.nats_user_key)
        except AuthError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            await self.identity.tokens.spend_enrollment(request.token, request.device_id)
        except EnrollmentRefused as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        await self.identity.credentials.issued(request.device_id, request.nats_user_key)
        return H.EnrollResponse(
            device_id=request.device_id,
            nats_jwt=jwt,
            nats_urls=self.identity.nats_urls,
            client_cert_pem=cert.decode(),
            ca_pem=self.identity.ca.pem.decode(),
            inbox_prefix=inbox_prefix(request.device_id),
            device_api=self.identity.device_api,
        )

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
        cmd = new_command(request.device_id, current().name)
        cmd.start_agent.agent_id = request.agent_id or f"agent-{uuid.uuid4().hex[:12]}"
        cmd.start_agent.goal = request.goal
        cmd.start_agent.budget.CopyFrom(request.budget)
        await self._send(cmd, context)
        return H.StartAgentResponse(agent_id=cmd.start_agent.agent_id, command_id=cmd.command_id)

    async def _owner(self, agent_id: str, device_id: str, context: Any) -> tuple[str, int]:
        """The device to send an agent's command to (the caller's choice, else its owner) and the
        agent's epoch as the hub knows it (0 when unknown: the device does not check it)."""
        record = await self.agents.get(agent_id) if agent_id else None
        if record is None:
            if not device_id:
                await self._record(agent_id, context)  # aborts: NOT_FOUND or INVALID_ARGUMENT
            return device_id, 0
        owner = str(record["device_id"])
        return device_id or owner, int(record.get("epoch", 0)) if device_id in ("", owner) else 0

    async def StopAgent(self, request: H.StopAgentRequest, context: Any) -> H.CommandAccepted:
        device, epoch = await self._owner(request.agent_id, request.device_id, context)
        cmd = new_command(device, current().name)
        cmd.epoch = epoch
        cmd.stop_agent.agent_id = request.agent_id
        cmd.stop_agent.reason = request.reason or "stopped through the hub API"
        await self._send(cmd, context)
        return H.CommandAccepted(command_id=cmd.command_id, device_id=device)

    async def DecideApproval(self, request: H.DecideApprovalRequest, context: Any) -> H.CommandAccepted:
        if "/" not in request.key:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "key (AGENT/STEP) is required")
        device, epoch = await self._owner(request.key.rsplit("/", 1)[0], request.device_id, context)
        by = current().name
        cmd = new_command(device, by)
        cmd.epoch = epoch
        d = cmd.decide_approval
        d.key, d.approve, d.by = request.key, request.approve, by
        d.note = f"{request.by}: {request.note}" if request.by and request.by not in by else request.note
        await self._send(cmd, context)
        return H.CommandAccepted(command_id=cmd.command_id, device_id=device)

    async def Consolidate(self, request: H.ConsolidateRequest, context: Any) -> H.ConsolidateReport:
        if self.dreamer is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "consolidation is not enabled on this hub"
            )
        assert self.dreamer is not None
        if len(request.run_id) > 128:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "run_id: at most 128 characters")
        try:
            report = await self.dreamer.consolidate_now(request.run_id or None)
        except KnowledgeError as exc:
            code = grpc.StatusCode.UNAVAILABLE if exc.retryable else grpc.StatusCode.FAILED_PRECONDITION
            await context.abort(code, str(exc))
        log.info("consolidation %s run by %s", report.run_id or "(nothing to do)", current().name)
        return _report(report)

    # migration -----------------------------------------------------------------------------------
    async def _migrating(self, step: Awaitable[T], context: Any) -> T:
        try:
            return await step
        except MigrationError as exc:
            await context.abort(getattr(grpc.StatusCode, exc.code), exc.message)
            raise  # not reached: abort raises

    async def _device_caller(self, context: Any) -> str:
        device = current().device_id
        if device is None:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "only a device (its client certificate) hands agents over"
            )
        assert device is not None
        return device

    async def MigrateAgent(self, request: H.MigrateAgentRequest, context: Any) -> H.Migration:
        start = self.migrations.start(request.agent_id, request.to_device, current().name)
        return migration_proto(await self._migrating(start, context))

    async def GetMigration(self, request: H.GetMigrationRequest, context: Any) -> H.Migration:
        found = await self.migrations.get(request.agent_id)
        if found is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"agent {request.agent_id!r} was never migrated")
        assert found is not None
        return migration_proto(found)

    async def PutHandover(self, request: H.PutHandoverRequest, context: Any) -> H.Migration:
        device = await self._device_caller(context)
        return migration_proto(await self._migrating(self.migrations.put_handover(device, request), context))

    async def GetHandover(self, request: H.GetHandoverRequest, context: Any) -> H.Handover:
        device = await self._device_caller(context)
        return await self._migrating(self.migrations.get_handover(device, request), context)

    async def CompleteHandover(self, request: H.CompleteHandoverRequest, context: Any) -> H.Migration:
        device = await self._device_caller(context)
        return migration_proto(await self._migrating(self.migrations.complete(device, request), context))

    async def TraceAgent(self, request: H.TraceAgentRequest, context: Any) -> H.TraceAgentResponse:
        record = await self._record(request.agent_id, context)
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
        last = fetched = 0
        try:
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                for msg in await sub.fetch(size, timeout=0.5):
                    fetched += 1
                    last = msg.metadata.sequence.stream
                    event = events_pb2.EdgeEvent.FromString(msg.data)
                    if event.WhichOneof("body") != "step":  # the agent's episodes travel beside its steps
                        continue
                    if fence(record, event):  # a stale copy's step (dead-lettered when it arrived)
                        continue
                    out.events.append(event.step)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if fetched == size:
            out.next_page_token = str(last + 1)
        return out


async def serve(
    js: JetStreamContext,
    addr: str,
    device_addr: str,
    identity: Identity,
    server_pair: tuple[bytes, bytes],
    watcher: DeviceWatcher | None = None,
    dreamer: DreamerService | None = None,
    goals: GoalService | None = None,
) -> tuple[grpc.aio.Server, int, int]:
    """Start the API (plus health and reflection), TLS with ``server_pair`` (certificate, key), on two
    ports ("host:0" for any): ``addr`` for operators (bearer tokens) and enrollment, ``device_addr``
    for devices, which must present a client certificate from the hub's CA (mutual TLS). Returns the
    server and both ports; ``identity.device_api`` is set to the device address. ``Consolidate`` runs
    ``dreamer`` (None: it answers FAILED_PRECONDITION)."""
    size = MAX_HANDOVER_BYTES + 1024 * 1024  # an agent's state in a migration, plus the envelope
    server = grpc.aio.server(
        interceptors=[AccessInterceptor(identity.tokens, identity.credentials)],
        options=[("grpc.max_receive_message_length", size), ("grpc.max_send_message_length", size)],
    )
    hub_pb2_grpc.add_HubServiceServicer_to_server(HubService(js, identity, watcher, dreamer, goals), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (
        H.DESCRIPTOR.services_by_name["HubService"].full_name,
        reflection.SERVICE_NAME,
        health.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server)
    cert, key = server_pair
    port = server.add_secure_port(addr, grpc.ssl_server_credentials([(key, cert)]))
    mutual = grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=identity.ca.pem, require_client_auth=True
    )
    device_port = server.add_secure_port(device_addr, mutual)
    identity.device_api = f"{device_addr.rsplit(':', 1)[0]}:{device_port}"
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set(names[0], health_pb2.HealthCheckResponse.SERVING)
    return server, port, device_port
