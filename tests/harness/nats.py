"""A real nats-server per test (free loopback port, temp store) and clients that reconnect forever."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client, RawCredentials

from edgehub.sync import NatsServer, ensure_topology


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    server = await NatsServer.start(tmp_path / "nats")
    yield server
    await server.stop()


async def _quiet(exc: Exception) -> None:
    """Connection errors while a test has the server down are expected; the client reconnects."""


async def connect(server: NatsServer, name: str = "test", creds: RawCredentials | None = None) -> Client:
    nc = await nats.connect(
        server.url,
        user_credentials=creds,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.1,
        allow_reconnect=True,
        error_cb=_quiet,
    )
    await ensure_topology(nc.jetstream())
    return nc


def natscli() -> str:
    """The natscli binary make setup builds into the cache (a missing one fails the test, never skips)."""
    cache = Path(os.environ.get("EDGEHUB_CACHE") or Path.home() / ".cache" / "edgehub")
    binary = cache / "go" / "bin" / "nats"
    if not binary.exists():
        pytest.fail(f"natscli is not at {binary}: make setup builds it")
    return str(binary)
