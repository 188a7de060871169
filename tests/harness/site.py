"""A site's protocol servers, started by the tests: a real Mosquitto broker (the Debian package, on a
free loopback port with a config of its own) and a Modbus TCP server from pymodbus's own server classes
(in this process), whose registers the test sets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from edgehub.sync import free_port

MOSQUITTO = Path("/usr/sbin/mosquitto")


@dataclass
class Broker:
    port: int
    proc: asyncio.subprocess.Process

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


def _require_mosquitto() -> None:
    if not MOSQUITTO.exists():  # a missing broker fails the test, never skips it
        pytest.fail(f"{MOSQUITTO} is missing: make setup installs the mosquitto package")


@pytest.fixture
async def mosquitto(tmp_path: Path) -> AsyncIterator[Broker]:
    """Mosquitto on 127.0.0.1 (anonymous, no persistence), stopped after the test."""
    _require_mosquitto()
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 20000\n"
    )
    proc = await asyncio.create_subprocess_exec(
        "setpriv", "--pdeathsig", "KILL", str(MOSQUITTO), "-c", str(conf),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(100):
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            break
        await asyncio.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("mosquitto did not listen within 5 s")
    yield Broker(port, proc)
    proc.terminate()
    await proc.wait()


@dataclass
class ModbusSite:
    port: int
    client: AsyncModbusTcpClient
    """The test's own client: it raises a register the way a sensor's controller would, over Modbus."""

    async def set(self, address: int, value: int) -> None:
        reply = await self.client.write_register(address, value, device_id=1)
        assert not reply.isError(), reply


@pytest.fixture
async def modbus_server() -> AsyncIterator[ModbusSite]:
    """A Modbus TCP server (unit 1, 100 holding registers from 0, all 0) on a free loopback port."""
    port = free_port()
    device = SimDevice(1, [SimData(0, count=100, values=0, datatype=DataType.REGISTERS)])
    server = ModbusTcpServer(device, address=("127.0.0.1", port))
    task = asyncio.create_task(server.serve_forever())
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    for _ in range(100):
        if await client.connect():
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the Modbus server did not listen within 5 s")
    yield ModbusSite(port, client)
    client.close()
    await server.shutdown()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
