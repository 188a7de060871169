"""Ids at the boundaries, as an attacker tries them (issue 17), against a real hub subprocess and its
real nats-server: raw gRPC calls the way grpcurl makes them (the generated stubs, no CLI checks), and a
device's own NATS credentials.

- A 5,000-character id in any API request is INVALID_ARGUMENT, not echoed, and the hub keeps working
  (it used to reach a NATS subject, nats-server dropped the hub's connection and it never came back).
- Two devices whose ids differ only past the old truncation point get distinct durable consumers, and
  each device's credentials reach only its own.
- Invalid UTF-8, an oversized command, an expired token: each answered with a clear status.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import nats
import nats.errors
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgehub.protocol import subjects
from edgehub.protocol.v1 import goals_pb2
from edgehub.protocol.v1 import hub_pb2 as H  # noqa: N812 - the house alias
from edgehub.sync.commands import CommandConsumer, consumer_name, new_command, send_command
from edgehub.sync.streams import MAX_EVENT_BYTES
from tests.harness.hub import Hub, start_hub
from tests.integration.test_identity import device_client, enrolled, stub

HUGE = "d" * 5000


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Hub:
    running = start_hub(tmp_path_factory.mktemp("hub"), "hub-ids")
    running.wait_ready()
    yield running  # type: ignore[misc]
    running.stop()


def api_as(hub: Hub, token: str | None = None) -> Any:
    """A raw stub (grpcurl-like), with ``token`` or the admin's."""
    return stub(hub, token or (hub.trust / "admin.token").read_text().strip())[1]


def refusal(call: object) -> tuple[grpc.StatusCode, str]:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def serving(hub: Hub) -> int:
    channel = grpc.secure_channel(hub.api, grpc.ssl_channel_credentials((hub.trust / "ca.pem").read_bytes()))
    with channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    return int(reply.status)


def test_a_huge_id_in_any_request_is_invalid_argument_and_the_hub_keeps_working(hub: Hub) -> None:
    api = api_as(hub)
    calls = {
        "StartAgent": lambda: api.StartAgent(H.StartAgentRequest(device_id=HUGE, goal="g"), timeout=10),
        "StopAgent": lambda: api.StopAgent(H.StopAgentRequest(agent_id="a1", device_id=HUGE), timeout=10),
        "DrainDevice": lambda: api.DrainDevice(H.DrainDeviceRequest(device_id=HUGE), timeout=10),
        "DecideApproval": lambda: api.DecideApproval(
            H.DecideApprovalRequest(key=f"{HUGE}/1", device_id="dev-1", approve=True), timeout=10
        ),
        "RevokeDevice": lambda: api.RevokeDevice(H.RevokeDeviceRequest(device_id=HUGE), timeout=10),
        "MigrateAgent": lambda: api.MigrateAgent(
            H.MigrateAgentRequest(agent_id=HUGE, to_device="d"), timeout=10
        ),
        "CreateEnrollmentToken": lambda: api.CreateEnrollmentToken(
            H.CreateEnrollmentTokenRequest(device_id=HUGE), timeout=10
        ),
        "DeleteApiTokens": lambda: api.DeleteApiTokens(H.DeleteApiTokensRequest(name=HUGE), timeout=10),
        "CancelGoal": lambda: api.CancelGoal(goals_pb2.CancelGoalRequest(goal_id=HUGE), timeout=10),
    }
    for name, call in calls.items():
        code, details = refusal(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, code, details[:200])
        assert "5000 characters" in details, (name, details[:200])
        assert len(details) < 200, name  # the input is never echoed back
    # still fully working: a valid command goes through NATS, health says so
    ok = api.StartAgent(H.StartAgentRequest(device_id="dev-after", goal="g"), timeout=10)
    assert ok.command_id
    assert api.ListAgents(H.ListAgentsRequest(), timeout=10) is not None
    assert serving(hub) == health_pb2.HealthCheckResponse.SERVING


def test_invalid_utf8_is_invalid_argument_and_only_after_the_caller_is_known(hub: Hub) -> None:
    raw = b"\x0a\x02\xff\xfe\x12\x01g"  # StartAgentRequest{device_id: (not UTF-8), goal: "g"}
    method = "/edgehub.v1.HubService/StartAgent"
    for token, expected in (
        (None, grpc.StatusCode.UNAUTHENTICATED),
        ("admin", grpc.StatusCode.INVALID_ARGUMENT),
    ):
        value = (hub.trust / "admin.token").read_text().strip() if token else None
        channel, _ = stub(hub, value)
        with channel:
            call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
            code, details = refusal(lambda c=call: c(raw, timeout=10))
        assert code == expected, details
    assert "not a valid message" in details
    assert "Traceback" not in details
    assert "DecodeError" not in details


def test_an_oversized_command_is_invalid_argument(hub: Hub) -> None:
    api = api_as(hub)
    code, details = refusal(
        lambda: api.StartAgent(
            H.StartAgentRequest(device_id="dev-1", goal="g" * (MAX_EVENT_BYTES + 1)), timeout=20
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most" in details


def test_bad_page_tokens_huge_token_names_and_absurd_lifetimes_are_invalid_argument(hub: Hub) -> None:
    api = api_as(hub)
    for page_token in ("-1", "abc", "9" * 5000):
        code, details = refusal(
            lambda t=page_token: api.TraceAgent(H.TraceAgentRequest(agent_id="a1", page_token=t), timeout=10)
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details == "page_token: not one this hub gave (use next_page_token)"
    huge = H.CreateApiTokenRequest(name="n" * 1_000_000, role=H.ROLE_VIEWER)
    code, details = refusal(lambda: api.CreateApiToken(huge, timeout=20))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(details) < 200
    for ttl in (float("inf"), float("nan"), 1e300):
        forever = H.CreateApiTokenRequest(name="ci", role=H.ROLE_VIEWER, ttl_s=ttl)
        code, details = refusal(lambda r=forever: api.CreateApiToken(r, timeout=10))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, ttl
        assert "ttl_s" in details


def test_an_expired_token_is_reported_as_expired(hub: Hub) -> None:
    api = api_as(hub)
    brief = api.CreateApiToken(
        H.CreateApiTokenRequest(name="brief-1", role=H.ROLE_VIEWER, ttl_s=1.0), timeout=10
    )
    as_brief = api_as(hub, brief.token)
    time.sleep(max(0.0, brief.expires_at - time.time()) + 0.2)
    code, details = refusal(lambda: as_brief.ListAgents(H.ListAgentsRequest(), timeout=10))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in details
    forged = api_as(hub, "eht_forged")
    code, details = refusal(lambda: forged.ListAgents(H.ListAgentsRequest(), timeout=10))
    assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, "unknown or malformed bearer token")


LONG = "plant-north.line-03.station-12.robot-arm-controller-unit-000"


def _old_consumer_name(device_id: str) -> str:
    """The name earlier releases gave (hex, cut at 120): here only to show the test hits the collision."""
    return "edge-x" + device_id.encode().hex()[:120]


async def test_devices_whose_ids_differ_past_the_old_truncation_cannot_read_each_others_commands(
    hub: Hub, tmp_path: Path
) -> None:
    one, two = LONG + "1", LONG + "2"
    assert _old_consumer_name(one) == _old_consumer_name(two)  # the collision issue 17 reported
    assert consumer_name(one) != consumer_name(two)
    await asyncio.to_thread(enrolled, hub, one, tmp_path / "one")
    identity_two = await asyncio.to_thread(enrolled, hub, two, tmp_path / "two")
    hub_nc = await nats.connect(hub.url, user_credentials=hub.creds())
    try:
        for device in (one, two):
            cmd = new_command(device, "test")
            cmd.stop_agent.agent_id = f"agent-of-{device[-4:]}"
            await send_command(hub_nc.jetstream(), cmd)
    finally:
        await hub_nc.close()
    errors: list[str] = []
    nc = await device_client(identity_two, errors)  # unit ...0002, with its own real credentials
    try:
        js = nc.jetstream()
        got: list[str] = []

        async def handle(cmd: object) -> None:
            got.append(cmd.stop_agent.agent_id)

        stop = asyncio.Event()
        mine = asyncio.create_task(CommandConsumer(js, two, handle).run(stop))
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # time for anything else to arrive
        stop.set()
        await mine
        assert got == ["agent-of-0002"]
        with pytest.raises(nats.errors.TimeoutError):  # bind to or create unit 0001's consumer
            await CommandConsumer(js, one, handle)._subscribe()
        for api in (
            f"$JS.API.CONSUMER.MSG.NEXT.{subjects.COMMANDS_STREAM}.{consumer_name(one)}",
            f"$JS.API.CONSUMER.CREATE.{subjects.COMMANDS_STREAM}.{consumer_name(two)}.{subjects.commands(one)}",
        ):
            with pytest.raises(nats.errors.TimeoutError):
                await nc.request(api, b"{}", timeout=1)
    finally:
        await nc.close()
