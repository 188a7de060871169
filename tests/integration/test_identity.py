"""Identity and access against a real hub subprocess and its real nats-server (operator mode):
enrollment with one-time tokens, per-device NATS permissions, TLS, bearer-token roles, device
client certificates."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import nats
import nats.errors
import pytest
from nats.aio.client import Client

from edgehub.edge.uplink.identity import DeviceIdentity, EnrollmentError, enroll
from edgehub.protocol import subjects
from edgehub.protocol.v1 import hub_pb2 as H  # noqa: N812 - the house alias
from edgehub.protocol.v1 import hub_pb2_grpc
from edgehub.sync.auth import decode_jwt
from edgehub.sync.commands import CommandConsumer, consumer_name, new_command, send_command
from edgehub.sync.streams import DEVICES
from edgehub.sync.tls import CertificateAuthority, csr, key_pem, new_key
from tests.harness.hub import Hub, start_hub
from tests.harness.wait import eventually


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Hub:
    running = start_hub(tmp_path_factory.mktemp("hub"), "hub-id")
    running.wait_ready()
    yield running  # type: ignore[misc]
    running.stop()


def token_for(hub: Hub, device_id: str, ttl: int = 600) -> str:
    done = hub.cli("devices", "enroll-token", device_id, "--ttl", str(ttl), "--json")
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["token"])


def enrolled(hub: Hub, device_id: str, folder: Path) -> DeviceIdentity:
    return enroll(folder, device_id, hub.api, token_for(hub, device_id), (hub.trust / "ca.pem").read_bytes())


async def device_client(identity: DeviceIdentity, errors: list[str]) -> Client:
    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    return await nats.connect(
        list(identity.nats_urls),
        user_credentials=str(identity.creds),
        inbox_prefix=identity.inbox_prefix,
        error_cb=on_error,
        max_reconnect_attempts=1,
    )


@pytest.fixture
async def two_devices(hub: Hub, tmp_path: Path) -> AsyncIterator[tuple[Client, list[str], DeviceIdentity]]:
    a = await asyncio.to_thread(enrolled, hub, "dev-a", tmp_path / "a")
    await asyncio.to_thread(enrolled, hub, "dev-b", tmp_path / "b")
    errors: list[str] = []
    nc = await device_client(a, errors)
    yield nc, errors, a
    await nc.close()


async def test_a_device_publishes_its_own_events_and_twin_but_not_another_devices(
    two_devices: tuple[Client, list[str], DeviceIdentity],
) -> None:
    nc, errors, _ = two_devices
    js = nc.jetstream()
    ack = await js.publish(subjects.events("dev-a", "agent-1"), b"not even an event: the hub dead-letters it")
    assert ack.stream == subjects.EVENTS_STREAM
    kv = await js.key_value(DEVICES.name)
    await kv.put("dev-a", b"{}")
    for subject in (
        subjects.events("dev-b", "agent-1"),  # as another device
        subjects.commands("dev-b"),  # forging commands
        subjects.commands("dev-a"),  # even to itself: commands come from the hub
        f"$KV.{DEVICES.name}.dev-b",  # another device's twin
        "edgehub.ev.dev-a",  # outside the event subject shape
    ):
        with pytest.raises(nats.errors.TimeoutError):
            await js.publish(subject, b"x", timeout=1)
    await asyncio.sleep(0.3)
    assert any('permissions violation for publish to "edgehub.ev.dev-b.agent-1"' in e for e in errors)
    assert any(f'"$kv.{DEVICES.name}.dev-b"' in e.lower() for e in errors), errors  # nats-py lower-cases it


async def test_a_device_reads_its_own_commands_and_no_one_elses(
    hub: Hub, two_devices: tuple[Client, list[str], DeviceIdentity]
) -> None:
    nc, errors, _ = two_devices
    hub_nc = await nats.connect(hub.url, user_credentials=hub.creds())
    try:
        for device in ("dev-a", "dev-b"):
            cmd = new_command(device, "test")
            cmd.stop_agent.agent_id = f"agent-of-{device}"
            await send_command(hub_nc.jetstream(), cmd)
    finally:
        await hub_nc.close()
    js = nc.jetstream()
    got: list[str] = []

    async def handle(cmd: object) -> None:
        got.append(cmd.stop_agent.agent_id)  # type: ignore[attr-defined]

    stop = asyncio.Event()
    mine = asyncio.create_task(CommandConsumer(js, "dev-a", handle).run(stop))
    for _ in range(100):
        if got:
            break
        await asyncio.sleep(0.1)
    stop.set()
    await mine
    assert got == ["agent-of-dev-a"]
    with pytest.raises(nats.errors.TimeoutError):  # bind to or create the other device's consumer
        await CommandConsumer(js, "dev-b", handle)._subscribe()
    for api in (
        f"$JS.API.CONSUMER.MSG.NEXT.{subjects.COMMANDS_STREAM}.{consumer_name('dev-b')}",
        f"$JS.API.STREAM.MSG.GET.{subjects.COMMANDS_STREAM}",
        f"$JS.API.DIRECT.GET.{subjects.COMMANDS_STREAM}",
        f"$JS.API.CONSUMER.CREATE.{subjects.COMMANDS_STREAM}.{consumer_name('dev-a')}.{subjects.commands('dev-b')}",
    ):
        with pytest.raises(nats.errors.TimeoutError):
            await nc.request(api, b"{}", timeout=1)
    sub = await nc.subscribe(subjects.commands("dev-b"))  # no subscription outside its own inbox prefix
    with pytest.raises(nats.errors.TimeoutError):
        await sub.next_msg(timeout=1)
    await asyncio.sleep(0.3)
    assert any("permissions violation for subscription" in e for e in errors)


async def test_enrollment_tokens_are_one_time_and_bound_to_their_device(hub: Hub, tmp_path: Path) -> None:
    ca = (hub.trust / "ca.pem").read_bytes()
    token = await asyncio.to_thread(token_for, hub, "dev-c")
    with pytest.raises(EnrollmentError, match="this token is for device 'dev-c', not 'dev-x'"):
        await asyncio.to_thread(enroll, tmp_path / "x", "dev-x", hub.api, token, ca)
    identity = await asyncio.to_thread(enroll, tmp_path / "c", "dev-c", hub.api, token, ca)
    assert identity.device_id == "dev-c"
    assert (tmp_path / "c" / "device.creds").stat().st_mode & 0o077 == 0
    with pytest.raises(EnrollmentError, match="failed_precondition: unknown or already used"):
        await asyncio.to_thread(enroll, tmp_path / "c2", "dev-c", hub.api, token, ca)
    expired = await asyncio.to_thread(token_for, hub, "dev-d", 1)
    await asyncio.sleep(1.5)
    with pytest.raises(EnrollmentError, match="expired"):
        await asyncio.to_thread(enroll, tmp_path / "d", "dev-d", hub.api, expired, ca)
    with pytest.raises(EnrollmentError, match="unknown or already used"):
        await asyncio.to_thread(enroll, tmp_path / "e", "dev-e", hub.api, "ehe_made-up", ca)
    wrong = CertificateAuthority.load_or_create(tmp_path / "other").pem
    with pytest.raises(EnrollmentError, match="unavailable"):  # a hub we cannot verify gets nothing
        await asyncio.to_thread(enroll, tmp_path / "f", "dev-c", hub.api, token, wrong)


def stub(
    hub: Hub, token: str | None = None, cert: tuple[bytes, bytes] | None = None, addr: str = ""
) -> tuple[grpc.Channel, object]:
    ca = (hub.trust / "ca.pem").read_bytes()
    creds = grpc.ssl_channel_credentials(ca, cert[1], cert[0]) if cert else grpc.ssl_channel_credentials(ca)
    if token:
        creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))
    channel = grpc.secure_channel(addr or hub.api, creds)
    return channel, hub_pb2_grpc.HubServiceStub(channel)


def code_of(call: object) -> grpc.StatusCode:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_api_roles_tokens_and_tls(hub: Hub, tmp_path: Path) -> None:
    admin = (hub.trust / "admin.token").read_text().strip()
    _, as_admin = stub(hub, admin)
    viewer = as_admin.CreateApiToken(
        H.CreateApiTokenRequest(name="vic", role=H.ROLE_VIEWER), timeout=10
    ).token  # type: ignore[attr-defined]
    operator = hub.cli("tokens", "create", "olga", "--role", "operator")
    assert operator.returncode == 0, operator.stderr
    _, anon = stub(hub)
    _, as_viewer = stub(hub, viewer)
    _, as_operator = stub(hub, operator.stdout.strip())
    _, forged = stub(hub, "eht_forged")
    start = H.StartAgentRequest(device_id="nowhere", goal="g")
    listing = H.ListAgentsRequest()
    assert code_of(lambda: anon.ListAgents(listing, timeout=10)) == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    assert code_of(lambda: forged.ListAgents(listing, timeout=10)) == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    assert code_of(lambda: as_viewer.ListAgents(listing, timeout=10)) == grpc.StatusCode.OK  # type: ignore[attr-defined]
    assert code_of(lambda: as_viewer.StartAgent(start, timeout=10)) == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    assert code_of(lambda: as_operator.StartAgent(start, timeout=10)) == grpc.StatusCode.OK  # type: ignore[attr-defined]
    new_token = H.CreateApiTokenRequest(name="x", role=H.ROLE_ADMIN)
    assert (
        code_of(lambda: as_operator.CreateApiToken(new_token, timeout=10))
        == grpc.StatusCode.PERMISSION_DENIED
    )  # type: ignore[attr-defined]
    who = as_operator.WhoAmI(H.WhoAmIRequest(), timeout=10)  # type: ignore[attr-defined]
    assert (who.name, who.role) == ("operator:olga", H.ROLE_OPERATOR)
    denied = hub.cli("agents", "start", "-d", "d", "-g", "g", env={"EDGEHUB_TOKEN": viewer})
    assert denied.returncode == 1
    assert "permission_denied: StartAgent needs role operator; caller operator:vic" in denied.stderr
    # a plaintext client gets no answer from the TLS port
    with grpc.insecure_channel(hub.api) as plain:
        call = hub_pb2_grpc.HubServiceStub(plain).ListAgents
        assert code_of(lambda: call(listing, timeout=5)) == grpc.StatusCode.UNAVAILABLE


def test_a_device_certificate_identifies_the_device_for_its_own_records_only(
    hub: Hub, tmp_path: Path
) -> None:
    identity = enrolled(hub, "dev-m", tmp_path / "m")
    cert = ((identity.folder / "device.pem").read_bytes(), (identity.folder / "device.key").read_bytes())
    assert identity.device_api
    assert identity.device_api != hub.api
    _, as_device = stub(hub, cert=cert, addr=identity.device_api)
    who = as_device.WhoAmI(H.WhoAmIRequest(), timeout=10)  # type: ignore[attr-defined]
    assert (who.name, who.role) == ("device:dev-m", H.ROLE_DEVICE)
    other = H.GetDeviceRequest(device_id="dev-a")
    assert code_of(lambda: as_device.GetDevice(other, timeout=10)) == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    mine = H.GetDeviceRequest(device_id="dev-m")
    assert code_of(lambda: as_device.GetDevice(mine, timeout=10)) == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    listing = H.ListAgentsRequest()
    assert code_of(lambda: as_device.ListAgents(listing, timeout=10)) == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    _, no_cert = stub(hub, addr=identity.device_api)  # the device port wants a client certificate
    assert code_of(lambda: no_cert.WhoAmI(H.WhoAmIRequest(), timeout=5)) == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    other_ca = CertificateAuthority.load_or_create(tmp_path / "rogue")
    rogue_key = new_key()
    rogue = (other_ca.sign_device("dev-a", csr("dev-a", rogue_key)), key_pem(rogue_key))
    _, impostor = stub(hub, cert=rogue, addr=identity.device_api)  # a certificate the hub did not issue
    assert code_of(lambda: impostor.WhoAmI(H.WhoAmIRequest(), timeout=5)) == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]


def user_key(identity: DeviceIdentity) -> str:
    """The NATS user public key of a device's credentials (the JWT's subject)."""
    jwt = identity.creds.read_text().split("-----BEGIN NATS USER JWT-----\n", 1)[1].split("\n", 1)[0]
    return str(decode_jwt(jwt)["sub"])


async def test_a_revoked_device_is_cut_off_from_nats_and_the_api_until_enrolled_again(
    hub: Hub, tmp_path: Path
) -> None:
    identity = await asyncio.to_thread(enrolled, hub, "dev-r", tmp_path / "r")
    errors: list[str] = []
    nc = await device_client(identity, errors)
    await nc.publish(subjects.events("dev-r", "a1"), b"x")
    await nc.flush()
    cert = ((identity.folder / "device.pem").read_bytes(), (identity.folder / "device.key").read_bytes())
    _, as_device = stub(hub, cert=cert, addr=identity.device_api)
    assert as_device.WhoAmI(H.WhoAmIRequest(), timeout=10).name == "device:dev-r"  # type: ignore[attr-defined]

    # only an admin may revoke
    operator = hub.cli("tokens", "create", "rita", "--role", "operator")
    denied = hub.cli("devices", "revoke", "dev-r", env={"EDGEHUB_TOKEN": operator.stdout.strip()})
    assert denied.returncode != 0
    assert "needs role admin" in denied.stderr
    revoked = await asyncio.to_thread(hub.cli, "devices", "revoke", "dev-r", "--reason", "stolen", "--json")
    assert revoked.returncode == 0, revoked.stderr
    reply = json.loads(revoked.stdout)
    assert reply["applied"] is True
    assert reply["user_keys"] == [user_key(identity)]

    # the server closes its connection and refuses it again; the API refuses its certificate
    await eventually(lambda: not nc.is_connected, within=10, what="the revoked device to be disconnected")
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(
            list(identity.nats_urls),
            user_credentials=str(identity.creds),
            inbox_prefix=identity.inbox_prefix,
            max_reconnect_attempts=0,
            allow_reconnect=False,
        )
    assert code_of(lambda: as_device.WhoAmI(H.WhoAmIRequest(), timeout=10)) == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    await nc.close()

    # enrolled again (a new token, a new key and certificate), it works again; others were never affected
    again = await asyncio.to_thread(enrolled, hub, "dev-r", tmp_path / "r2")
    assert user_key(again) != user_key(identity)
    nc2 = await device_client(again, errors)
    await nc2.publish(subjects.events("dev-r", "a1"), b"y")
    await nc2.flush()
    await nc2.close()
    cert2 = ((again.folder / "device.pem").read_bytes(), (again.folder / "device.key").read_bytes())
    _, as_device2 = stub(hub, cert=cert2, addr=again.device_api)
    assert as_device2.WhoAmI(H.WhoAmIRequest(), timeout=10).name == "device:dev-r"  # type: ignore[attr-defined]


def test_operator_tokens_are_listed_without_secrets_expire_and_can_be_deleted(hub: Hub) -> None:
    made = hub.cli("tokens", "create", "tess", "--role", "viewer")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    _, as_tess = stub(hub, token)
    listing = H.ListAgentsRequest()
    assert code_of(lambda: as_tess.ListAgents(listing, timeout=10)) == grpc.StatusCode.OK  # type: ignore[attr-defined]
    listed = hub.cli("tokens", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    tess = [r for r in rows if r["name"] == "tess"]
    assert tess
    assert tess[0]["role"] == "ROLE_VIEWER"
    assert tess[0]["created_by"] == "operator:admin"
    assert token not in listed.stdout  # only hashes are kept, and only a prefix of one is shown
    assert hub.cli("tokens", "list", env={"EDGEHUB_TOKEN": token}).returncode != 0  # admin only

    deleted = hub.cli("tokens", "delete", "tess")
    assert deleted.returncode == 0, deleted.stderr
    assert "deleted 1 token(s) of tess" in deleted.stdout
    assert code_of(lambda: as_tess.ListAgents(listing, timeout=10)) == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    missing = hub.cli("tokens", "delete", "tess")
    assert missing.returncode != 0
    assert "no token named 'tess'" in missing.stderr

    admin = (hub.trust / "admin.token").read_text().strip()
    _, as_admin = stub(hub, admin)
    brief = as_admin.CreateApiToken(  # type: ignore[attr-defined]
        H.CreateApiTokenRequest(name="brief", role=H.ROLE_VIEWER, ttl_s=1.0), timeout=10
    )
    assert brief.expires_at > 0
    _, as_brief = stub(hub, brief.token)
    assert code_of(lambda: as_brief.ListAgents(listing, timeout=10)) == grpc.StatusCode.OK  # type: ignore[attr-defined]
    time.sleep(max(0.0, brief.expires_at - time.time()) + 0.2)
    assert code_of(lambda: as_brief.ListAgents(listing, timeout=10)) == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]


async def test_a_device_receives_its_own_nats_trigger_events_and_no_other_devices(
    hub: Hub, two_devices: tuple[Client, list[str], DeviceIdentity]
) -> None:
    nc, errors, _ = two_devices
    mine = await nc.subscribe(subjects.device_trigger("dev-a", "line3.alarm"))
    theirs = await nc.subscribe(subjects.device_trigger("dev-b"))
    await nc.flush()
    hub_nc = await nats.connect(hub.url, user_credentials=hub.creds())  # hub users may publish there
    try:
        for device in ("dev-a", "dev-b"):
            await hub_nc.publish(subjects.device_trigger(device, "line3.alarm"), device.encode())
        await hub_nc.flush()
    finally:
        await hub_nc.close()
    assert (await mine.next_msg(timeout=5)).data == b"dev-a"
    with pytest.raises(nats.errors.TimeoutError):
        await theirs.next_msg(timeout=1)
    await eventually(
        lambda: any("permissions violation for subscription" in e.lower() for e in errors), within=5
    )
    with pytest.raises(nats.errors.TimeoutError):  # a device cannot raise its own triggers
        await nc.jetstream().publish(subjects.device_trigger("dev-a", "x"), b"{}", timeout=1)
