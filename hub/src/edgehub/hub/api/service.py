"""The management API (gRPC ``edgehub.v1.HubService`` over TLS), with server reflection and the
standard health service. ``HubService`` is the servicer: one mixin per area (devices, agents, tokens,
enrollment, migrations, recovery, knowledge, goals, policies), each calling the hub's services
(``HubServices``, built once by the daemon); who may call what is ``access``, and errors become
statuses in one place (``errors``).
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from edgehub.protocol.v1 import hub_pb2, hub_pb2_grpc
from edgehub.sync.streams import MAX_HANDOVER_BYTES

from ..services import HubServices
from .access import AccessInterceptor
from .agents import AgentsApi
from .devices import DevicesApi
from .enrollment import EnrollmentApi
from .errors import maps_errors
from .goals import GoalsApi
from .knowledge import KnowledgeApi
from .migrations import MigrationsApi
from .policies import PoliciesApi
from .recovery import RecoveryApi
from .rollouts import RolloutsApi
from .tokens import TokensApi

H = hub_pb2
SERVICE = H.DESCRIPTOR.services_by_name["HubService"]


@maps_errors(SERVICE)
class HubService(
    DevicesApi,
    AgentsApi,
    TokensApi,
    EnrollmentApi,
    MigrationsApi,
    RecoveryApi,
    KnowledgeApi,
    GoalsApi,
    PoliciesApi,
    RolloutsApi,
    hub_pb2_grpc.HubServiceServicer,
):
    """The servicer: builds nothing, holds the hub's services."""

    def __init__(self, services: HubServices) -> None:
        self.services = services
        self.goals = services.goals


class ApiHealth:
    """The standard gRPC health service of the API: SERVING while the hub can reach NATS, NOT_SERVING
    while it cannot (``HubDaemon`` follows its connection); both for "" (the server) and the service."""

    NAMES = ("", SERVICE.full_name)

    def __init__(self) -> None:
        self.servicer = health.aio.HealthServicer()
        self.serving = False

    async def set(self, serving: bool) -> None:
        self.serving = serving
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in self.NAMES:
            await self.servicer.set(name, status)


async def serve(
    services: HubServices,
    addr: str,
    device_addr: str,
    server_pair: tuple[bytes, bytes],
    api_health: ApiHealth | None = None,
    *,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> tuple[grpc.aio.Server, int, int]:
    """Start the API (plus health and reflection), TLS with ``server_pair`` (certificate, key), on two
    ports ("host:0" for any): ``addr`` for operators (bearer tokens) and enrollment, ``device_addr``
    for devices, which must present a client certificate from the hub's CA (mutual TLS). Returns the
    server and both ports; ``services.identity.device_api`` is set to the device address. The health
    service (``api_health``) says SERVING once it has started; the daemon changes it with NATS.
    ``interceptors`` run before the access check (the tracing one: ``HubTracing.server_interceptors``)."""
    size = MAX_HANDOVER_BYTES + 1024 * 1024  # an agent's state in a migration, plus the envelope
    identity = services.identity
    server = grpc.aio.server(
        interceptors=[*interceptors, AccessInterceptor(services.tokens, identity.credentials)],
        options=[("grpc.max_receive_message_length", size), ("grpc.max_send_message_length", size)],
    )
    hub_pb2_grpc.add_HubServiceServicer_to_server(HubService(services), server)
    api_health = api_health or ApiHealth()
    health_pb2_grpc.add_HealthServicer_to_server(api_health.servicer, server)
    names = (SERVICE.full_name, reflection.SERVICE_NAME, health.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    cert, key = server_pair
    port = server.add_secure_port(addr, grpc.ssl_server_credentials([(key, cert)]))
    mutual = grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=identity.ca.pem, require_client_auth=True
    )
    device_port = server.add_secure_port(device_addr, mutual)
    identity.device_api = f"{device_addr.rsplit(':', 1)[0]}:{device_port}"
    await server.start()
    await api_health.set(True)
    return server, port, device_port
