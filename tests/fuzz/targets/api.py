"""Fuzz target ``api``: requests to the management API, as the gRPC server hands them to the hub once
the caller is authenticated: decoded by the access interceptor (``api.access``), checked by the one
error mapping (``api.errors``: ids), then served by the real servicer (``api.service.HubService``)
over the hub's real services (``HubServices.build``) on an in-memory JetStream (``edgehub.sync.fake``).

Each input is one call: a method of ``HubService`` and its request, built from the fuzzer's bytes
(``protos``) and maybe damaged on the wire. The caller is the admin, or the compromised device
``dev-x`` for the methods devices call (handovers). The world: ``dev-a``'s twin, an agent of
``dev-a``, a running goal, an operator token.

Properties (an ``AssertionError`` or any exception is a crash):

- a call ends with a response or a status, never another exception, never ``INTERNAL`` or
  ``UNKNOWN``, and within 5 seconds;
- a call that ends with a status (a refused request) changes no record and publishes nothing.

A call that reaches a JetStream feature the fake does not model (``TraceAgent`` reads the events
stream) ends there, unchecked.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from atheris import FuzzedDataProvider
from google.protobuf.message_factory import GetMessageClass
from prometheus_client import CollectorRegistry

from edgehub.hub.api import access
from edgehub.hub.api.service import SERVICE, HubService
from edgehub.hub.config import HubConfig
from edgehub.hub.operators import Principal, Role
from edgehub.hub.services import HubServices
from edgehub.protocol.ids import kv_key
from edgehub.protocol.v1 import agent_pb2, events_pb2, goals_pb2, twin_pb2
from edgehub.sync.auth import Trust
from edgehub.sync.fake import FakeJetStream, FakeUnsupported
from edgehub.sync.streams import DEVICES
from edgehub.sync.tls import CertificateAuthority
from tests.fuzz.fake import Aborted, FakeContext
from tests.fuzz.protos import build, damaged

G = goals_pb2
S = agent_pb2
LOOP = asyncio.new_event_loop()
METHODS = list(SERVICE.methods)
ROLES = access.required_roles()
ADMIN = Principal("admin", Role.ROLE_ADMIN)
ATTACKER = Principal("device:dev-x", Role.ROLE_DEVICE)
GOAL_ID = "g-0a0b0c0d0e0f"
WORDS = ["dev-a", "dev-x", "agent-a1", GOAL_ID, "a", "b", "agent-a1/1", "admin", "viewer", "operator", "*"]
FAILED = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
TRUST = Path(tempfile.mkdtemp(prefix="edgehub-fuzz-api-"))


class World:
    """The hub before each call (a snapshot of the fake)."""

    def __init__(self) -> None:
        self.js = FakeJetStream()
        self.cfg = HubConfig.model_validate({"planner": {"enabled": False}, "hub": {"id": "hub-fuzz"}})
        self.trust = Trust.load_or_create(TRUST)
        self.ca = CertificateAuthority.load_or_create(TRUST)
        self.start: FakeJetStream | None = None

    def services(self) -> HubServices:
        return HubServices.build(
            self.js,
            self.cfg,
            self.trust,
            self.ca,
            ["nats://127.0.0.1:4222"],
            CollectorRegistry(),  # type: ignore[arg-type]
        )

    async def build(self) -> None:
        services = self.services()
        twin = twin_pb2.DeviceTwin(
            schema_version=1, device_id="dev-a", state=twin_pb2.DEVICE_STATE_RUNNING, heartbeat_s=300,
            version="0.4.1", tools=["run_command", "finish"], max_concurrent=4,
        )  # fmt: skip
        twin.sent_at = 4_000_000_000  # online for as long as the fuzzing runs (bounded to "now")
        await (await self.js.key_value(DEVICES.name)).put(kv_key("dev-a"), twin.SerializeToString())
        event = events_pb2.EdgeEvent(schema_version=1, device_id="dev-a", agent_id="agent-a1", seq=1)
        event.step.CopyFrom(S.StepEvent(agent_id="agent-a1", step=1, status=S.AGENT_STATUS_RUNNING))
        await services.agents.apply_batch([event])
        plan = G.PlanDraft(tasks=[G.TaskDraft(id="a", goal="do a", estimate_tokens=100)])
        await services.goals.submit("inspect", by="admin", plan=plan, goal_id=GOAL_ID)
        await services.tokens.create("viewer", Role.ROLE_VIEWER, "admin")
        await services.close()
        self.js.published.clear()
        self.start = self.js.snapshot()


WORLD = World()


async def _stream(*chunks: Any) -> AsyncIterator[Any]:
    for chunk in chunks:
        yield chunk


async def call(method: Any, raw: bytes) -> None:
    js = WORLD.js
    assert WORLD.start is not None
    js.restore(WORLD.start)
    services = WORLD.services()
    servicer = HubService(services)
    context = FakeContext()
    path = f"/{SERVICE.full_name}/{method.name}"
    principal = ATTACKER if ROLES[path] == Role.ROLE_DEVICE else ADMIN
    before = js.state()
    token = access._current.set(principal)
    refused: Aborted | None = None
    try:
        request = await access._decoded(GetMessageClass(method.input_type).FromString, raw, path, context)
        if method.client_streaming:  # an upload (AddModel): the request as its only chunk
            request = _stream(request)
        await asyncio.wait_for(getattr(servicer, method.name)(request, context), 5)
    except FakeUnsupported:  # valid enough to reach a part of JetStream the fake does not model
        return
    except Aborted as aborted:
        refused = aborted
    finally:
        access._current.reset(token)
        await services.close()
    if refused is not None:
        assert refused.code not in FAILED, f"{method.name}: {refused}"
        assert js.state() == before, f"{method.name} refused ({refused}) but changed a record"
        assert not js.published, f"{method.name} refused ({refused}) but published {js.published[:1]}"


def one_input(data: bytes) -> None:
    if WORLD.start is None:
        LOOP.run_until_complete(WORLD.build())
    fdp = FuzzedDataProvider(data)
    method = fdp.PickValueInList(METHODS)
    request = build(GetMessageClass(method.input_type), fdp, WORDS)
    LOOP.run_until_complete(call(method, damaged(request.SerializeToString(), fdp)))
