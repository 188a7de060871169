"""The hub's NATS connection, supervised (issue 17), against a real nats-server the test controls (the
hub's external NATS, trusting the hub's operator keys): while the server is down the API's health
service says NOT_SERVING, SERVING again once the hub has reconnected, and calls work again; when the
server closes the hub's connection with an error nats-py never reconnects after (``maximum control
line exceeded``, what an over-long subject caused), the hub's run ends with ``NatsLost`` (``edgehub hub
run`` exits non-zero for its supervisor to restart it) instead of answering while applying nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgehub.hub.app import HubDaemon
from edgehub.hub.config import HubConfig
from edgehub.hub.errors import NatsLost
from edgehub.protocol.v1 import hub_pb2, hub_pb2_grpc
from edgehub.sync import NatsServer, free_port
from edgehub.sync.auth import Trust
from tests.harness.wait import eventually

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def config(tmp_path: Path, url: str) -> HubConfig:
    return HubConfig.model_validate(
        {
            "hub": {"id": "hub-supervised"},
            "nats": {"url": url},
            "api": {"addr": "127.0.0.1:0", "device_addr": "127.0.0.1:0", "tls_names": ["127.0.0.1"]},
            "auth": {"dir": str(tmp_path / "trust")},
            "neo4j": {"enabled": False},
        }
    )


class Api:
    """The hub's API as a client sees it: health (no token) and a listing (the admin's token)."""

    def __init__(self, hub: HubDaemon, trust: Path) -> None:
        tls = grpc.ssl_channel_credentials((trust / "ca.pem").read_bytes())
        token = grpc.access_token_call_credentials((trust / "admin.token").read_text().strip())
        self.channel = grpc.aio.secure_channel(
            hub.api_address, grpc.composite_channel_credentials(tls, token)
        )
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.hub = hub_pb2_grpc.HubServiceStub(self.channel)
        self.status = -1

    async def check(self) -> int:
        reply = await self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        self.status = reply.status
        return int(reply.status)

    async def until(self, status: int, within: float = 30) -> None:
        deadline = asyncio.get_running_loop().time() + within
        while await self.check() != status:
            assert asyncio.get_running_loop().time() < deadline, f"health stayed {self.status}, not {status}"
            await asyncio.sleep(0.1)


async def test_health_follows_the_nats_connection_and_a_connection_closed_for_good_ends_the_run(
    tmp_path: Path,
) -> None:
    trust = Trust.load_or_create(tmp_path / "trust")
    server = await NatsServer.start(tmp_path / "nats", port=free_port(), auth=trust.server_config())
    try:
        async with HubDaemon(config(tmp_path, server.url)) as hub:
            run = asyncio.create_task(hub.run())
            api = Api(hub, tmp_path / "trust")
            await api.until(SERVING)

            await server.kill()
            await api.until(NOT_SERVING)
            await server.restart()
            await api.until(SERVING)
            listing = await api.hub.ListDevices(hub_pb2.ListDevicesRequest(), timeout=10)
            assert list(listing.devices) == []  # the hub answers from NATS again
            assert not run.done()

            assert hub.nc is not None
            await hub.nc.publish("edgehub." + "x" * 5000, b"")  # the server closes the connection
            await eventually(lambda: run.done(), within=30, what="the hub's run to end")
            with pytest.raises(NatsLost):
                run.result()
            assert await api.check() == NOT_SERVING
            await api.channel.close()
    finally:
        await server.stop()
