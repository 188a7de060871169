"""NATS over TLS against a real hub subprocess and its real nats-server, as a device and as someone
between a device and the hub would try it.

The hub runs with ``[nats] tls = true`` on loopback (off loopback it is the default: see
tests/unit/test_nats_tls_rules.py and test_nats_leaf.py, whose site LAN is real) and a server
certificate that lives 17 s, so the running hub renews it during the module. A device enrolls and gets
``tls://`` URLs and the CA to check them with. What a device's credentials cannot do without TLS, what
a client with another CA cannot do, and what crosses the wire (a recording TCP relay between a real
client and the server) are checked here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
import ssl
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from cryptography import x509
from nats.aio.client import Client

from edgehub.edge.uplink.identity import DeviceIdentity, enroll
from edgehub.protocol import subjects
from edgehub.sync import NatsServer
from edgehub.sync.tls import CertificateAuthority, client_context, nats_tls
from tests.harness.hub import Hub, start_hub
from tests.harness.nats import natscli

DEVICE = "tls-dev"
CERT_DAYS = 0.0002
"""17 s: renewed when a third is left, about every 12 s."""


HUB_ENV = {"EDGEHUB_HUB__NATS__TLS": "true", "EDGEHUB_HUB__NATS__TLS_CERT_DAYS": str(CERT_DAYS)}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    running = start_hub(tmp_path_factory.mktemp("hub"), "hub-tls", env=HUB_ENV)
    running.wait_ready()
    yield running
    running.stop()


def on_hub_machine(hub: Hub) -> dict[str, str]:
    """What a command run where the hub runs needs: its trust folder and its NATS settings."""
    port = hub.url.rsplit(":", 1)[1]
    return {**HUB_ENV, "EDGEHUB_HUB__AUTH__DIR": str(hub.trust), "EDGEHUB_HUB__NATS__EMBEDDED_PORT": port}


@pytest.fixture(scope="module")
def device(hub: Hub, tmp_path_factory: pytest.TempPathFactory) -> DeviceIdentity:
    token = hub.cli("devices", "enroll-token", DEVICE, "--json")
    assert token.returncode == 0, token.stderr
    folder = tmp_path_factory.mktemp("device") / "identity"
    ca = (hub.trust / "ca.pem").read_bytes()
    return enroll(folder, DEVICE, hub.api, json.loads(token.stdout)["token"], ca)


def host_port(url: str) -> tuple[str, int]:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    return host, int(port)


async def as_device(identity: DeviceIdentity, url: str | None = None, **options: object) -> Client:
    urls = [url] if url else list(identity.nats_urls)
    return await nats.connect(
        urls,
        user_credentials=str(identity.creds),
        inbox_prefix=identity.inbox_prefix,
        allow_reconnect=False,
        connect_timeout=3,
        **{**nats_tls(urls, identity.nats_ca), **options},  # type: ignore[arg-type]
    )


async def presented_serial(url: str, ca: Path) -> int:
    """The serial number of the certificate the server presents to a new connection."""
    host, port = host_port(url)
    _, writer = await asyncio.open_connection(host, port, ssl=client_context(ca), server_hostname=host)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return int(x509.load_der_x509_certificate(der).serial_number)
    finally:
        writer.close()


async def test_enrollment_hands_out_tls_urls_and_the_ca_and_a_device_connects_with_them(
    device: DeviceIdentity, hub: Hub
) -> None:
    assert device.nats_urls
    assert all(u.startswith("tls://") for u in device.nats_urls), device.nats_urls
    assert device.nats_ca.name == "nats-ca.pem"
    assert device.nats_ca.read_bytes() == (hub.trust / "ca.pem").read_bytes()
    nc = await as_device(device)
    try:
        await nc.flush(timeout=5)
        assert nc.is_connected
        assert nc._transport is not None
        assert nc._transport._io_writer is not None
        assert nc._transport._io_writer.get_extra_info("ssl_object") is not None
    finally:
        await nc.close()


async def test_a_device_cannot_connect_without_tls(device: DeviceIdentity) -> None:
    host, port = host_port(device.nats_urls[0])
    # nats-py with the device's real credentials, plaintext: the server waits for a TLS hello
    plaintext = nats.connect(
        f"nats://{host}:{port}",
        user_credentials=str(device.creds),
        inbox_prefix=device.inbox_prefix,
        allow_reconnect=False,
        connect_timeout=2,
    )
    with pytest.raises((TimeoutError, nats.errors.NoServersError, OSError)):
        await plaintext
    # the raw protocol in clear: no INFO, no PONG, the connection is closed
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(4096), 10)
    writer.close()
    assert b"INFO" not in answer, answer
    assert b"PONG" not in answer, answer


async def test_a_server_with_a_certificate_from_another_ca_is_refused(
    device: DeviceIdentity, tmp_path: Path
) -> None:
    """Someone on the network answering in the hub's place, with a certificate of their own making."""
    rogue = CertificateAuthority.load_or_create(tmp_path / "rogue-ca")
    pair = rogue.write_server_pair(tmp_path / "rogue-tls", ["localhost", "127.0.0.1"], 1)
    impostor = await NatsServer.start(tmp_path / "impostor", tls=pair)
    try:
        with pytest.raises((ssl.SSLCertVerificationError, nats.errors.NoServersError)):
            await as_device(device, impostor.url)
    finally:
        await impostor.stop()


class Relay:
    """A TCP relay that records every byte in both directions (what a wire would carry)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.wire = bytearray()
        self.server: asyncio.Server | None = None

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                self.wire.extend(data)
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


async def publish_through(relay_addr: str, scheme: str, connect: dict[str, object], marker: bytes) -> None:
    nc = await nats.connect(
        f"{scheme}://{relay_addr}",
        allow_reconnect=False,
        connect_timeout=5,
        **connect,  # type: ignore[arg-type]
    )
    try:
        js = nc.jetstream()
        ack = await js.publish(subjects.events(DEVICE, "agent-wire"), b"secret mind-log: " + marker)
        assert ack.seq > 0
    finally:
        await nc.close()


async def test_traffic_on_the_wire_is_encrypted(device: DeviceIdentity, tmp_path: Path) -> None:
    marker = b"MARKER-7f3a9c-the-goal-is-to-open-valve-12"
    relay = Relay(host_port(device.nats_urls[0]))
    async with relay as addr:
        tls = {**nats_tls([f"tls://{addr}"], device.nats_ca)}
        creds = {"user_credentials": str(device.creds), "inbox_prefix": device.inbox_prefix}
        await publish_through(addr, "tls", {**tls, **creds}, marker)  # acknowledged by JetStream
    assert len(relay.wire) > 2000, "the relay saw no traffic: the check below would prove nothing"
    assert marker not in relay.wire
    assert b"CONNECT" not in relay.wire
    assert b"INFO" not in relay.wire
    assert b"-----BEGIN" not in relay.wire
    assert relay.wire[0] == 0x16, "the first byte on the wire is not a TLS handshake record"

    # the same relay in front of a plaintext server sees the marker: the check above can fail
    plain = await NatsServer.start(tmp_path / "plain")
    try:
        control = Relay(host_port(plain.url))
        async with control as addr:
            nc = await nats.connect(f"nats://{addr}", allow_reconnect=False)
            await nc.publish("x", b"secret mind-log: " + marker)
            await nc.flush()
            await nc.close()
        assert marker in control.wire
    finally:
        await plain.stop()


async def test_the_server_certificate_is_renewed_while_devices_stay_connected(device: DeviceIdentity) -> None:
    disconnects: list[str] = []

    async def on_disconnect() -> None:
        disconnects.append("disconnected")

    nc = await as_device(device, disconnected_cb=on_disconnect)
    try:
        first = await presented_serial(device.nats_urls[0], device.nats_ca)
        renewed = first
        for _ in range(300):  # a 17 s certificate is renewed within about 12 s
            await asyncio.sleep(0.1)
            renewed = await presented_serial(device.nats_urls[0], device.nats_ca)
            if renewed != first:
                break
        assert renewed != first, "the hub did not renew its NATS certificate"
        js = nc.jetstream()  # the connection from before the renewal still works
        ack = await js.publish(subjects.events(DEVICE, "agent-rot"), b"after the renewal")
        assert ack.seq > 0
        assert nc.is_connected
        assert not disconnects
        again = await as_device(device)  # and a new one verifies the new certificate
        await again.close()
    finally:
        await nc.close()


def natscli_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([natscli(), *args], capture_output=True, text=True, timeout=30, check=False)


def test_an_operator_gets_nats_credentials_for_natscli_which_needs_tls_first_and_revocation_cuts_off(
    hub: Hub, tmp_path: Path
) -> None:
    creds = tmp_path / "alice.creds"
    made = hub.cli("hub", "nats-creds", "alice", "--out", str(creds), "--ttl", "600", env=on_hub_machine(hub))
    assert made.returncode == 0, made.stdout + made.stderr
    assert "nats:alice" in made.stdout
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    hint = next(line for line in made.stdout.splitlines() if line.startswith("natscli: nats "))
    args = shlex.split(hint.removeprefix("natscli: nats "))
    assert "--tlsfirst" in args, hint
    listed = natscli_run(*args, "--names")  # the command it printed, as an operator pastes it
    assert listed.returncode == 0, listed.stderr
    assert subjects.EVENTS_STREAM in listed.stdout.split(), listed.stdout
    # the same client without TLS first gets nothing from the server
    plain = natscli_run("--server", hub.url, "--tlsca", str(hub.trust / "ca.pem"), "--creds", str(creds),
                        "--timeout", "3s", "stream", "ls", "--names")  # fmt: skip
    assert plain.returncode != 0, plain.stdout
    assert subjects.EVENTS_STREAM not in plain.stdout

    bad = hub.cli("devices", "revoke", "nats:not an id")
    assert bad.returncode != 0
    assert "not an id" in bad.stderr, bad.stderr
    revoked = hub.cli("devices", "revoke", "nats:alice", "--reason", "left the team")
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    after = natscli_run(*args, "--names")
    assert after.returncode != 0, after.stdout
    assert "authorization" in (after.stderr + after.stdout).lower(), after.stderr
