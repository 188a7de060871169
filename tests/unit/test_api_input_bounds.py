"""Bad input at the API's edge gets INVALID_ARGUMENT with a clear, short message (issue 17): ids in any
request (``check_request``), page tokens, token names and lifetimes. The whole path over raw gRPC
against a real hub is tests/integration/test_id_bounds.py."""

from __future__ import annotations

import grpc
import pytest

from edgehub.hub.api.errors import check_request
from edgehub.hub.errors import Refused
from edgehub.hub.fleet.traces import start_of
from edgehub.hub.operators import ApiTokens, Role
from edgehub.protocol.errors import EdgehubError, ErrorCode
from edgehub.protocol.v1 import commands_pb2, goals_pb2, hub_pb2

H = hub_pb2
HUGE = "d" * 5000


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (H.StartAgentRequest(device_id=HUGE, goal="g"), "device_id"),
        (H.StartAgentRequest(device_id="dev-1", agent_id="a b", goal="g"), "agent_id"),
        (H.StopAgentRequest(agent_id=HUGE), "agent_id"),
        (H.DrainDeviceRequest(device_id="dev.*"), "device_id"),
        (H.RevokeDeviceRequest(device_id=HUGE), "device_id"),
        (H.CreateEnrollmentTokenRequest(device_id="x" * 65), "device_id"),
        (H.MigrateAgentRequest(agent_id="a", to_device=HUGE), "to_device"),
        (H.CreateApiTokenRequest(name=HUGE, role=H.ROLE_VIEWER), "name"),
        (H.DeleteApiTokensRequest(name="bob smith"), "name"),
        (goals_pb2.DecideTaskRequest(goal_id="g-1", task_id=HUGE), "task_id"),
        (goals_pb2.CancelGoalRequest(goal_id="../etc"), "goal_id"),
    ],
)
def test_a_request_with_a_bad_id_is_refused_naming_the_field_without_echoing_it(
    request_: object, field: str
) -> None:
    with pytest.raises(EdgehubError) as err:
        check_request(request_)
    assert err.value.code is ErrorCode.INVALID_ARGUMENT
    assert err.value.message.startswith(field)
    assert len(err.value.message) < 200
    assert "d" * 20 not in err.value.message


def test_valid_requests_pass_and_empty_ids_are_left_to_the_service() -> None:
    check_request(H.StartAgentRequest(device_id="plant.line-03_x", agent_id="g-1a2b-t1-1", goal="g"))
    check_request(H.ListAgentsRequest())
    check_request(H.Principal(name="anything goes: not a request naming a token"))
    cmd = commands_pb2.Command(command_id="cmd-1", device_id="dev-1")
    cmd.start_agent.agent_id = "x" * 5000  # nested messages are checked too
    with pytest.raises(EdgehubError, match="agent_id"):
        check_request(cmd)


@pytest.mark.parametrize("token", ["-1", "0", "abc", "1" * 5000, "١٢", "9" * 20, " 5"])
def test_a_bad_page_token_is_invalid_argument_with_a_clear_message(token: str) -> None:
    with pytest.raises(Refused) as err:
        start_of(token)
    assert err.value.code is ErrorCode.INVALID_ARGUMENT
    assert err.value.message == "page_token: not one this hub gave (use next_page_token)"


def test_page_tokens_this_hub_gives_are_read() -> None:
    assert start_of("") == 1
    assert start_of("42") == 42


@pytest.mark.parametrize(
    ("name", "ttl_s", "says"),
    [
        ("n" * 1_000_000, 0.0, "name: 1000000 characters"),
        ("ci", float("inf"), "ttl_s must be 0"),
        ("ci", float("nan"), "ttl_s must be 0"),
        ("ci", 1e300, "ttl_s must be 0"),
        ("ci", -1.0, "ttl_s must be 0"),
    ],
)
async def test_token_names_and_lifetimes_are_bounded(name: str, ttl_s: float, says: str) -> None:
    tokens = ApiTokens(None)  # type: ignore[arg-type]  # refused before the store is touched
    with pytest.raises(EdgehubError) as err:
        await tokens.create(name, Role.ROLE_VIEWER, "operator:admin", ttl_s)
    assert err.value.code is ErrorCode.INVALID_ARGUMENT
    assert err.value.message.startswith(says)
    assert len(err.value.message) < 200


def test_the_hub_cli_refuses_a_bad_id_before_sending(capsys: pytest.CaptureFixture[str]) -> None:
    from typer import Exit

    from edgehub.hub.cli.api import call

    request = H.StartAgentRequest(device_id=HUGE, goal="g")
    with pytest.raises(Exit) as done:  # nothing listens there: the request never leaves
        call("127.0.0.1:9", lambda s: s.StartAgent(request, timeout=5), grpc.ssl_channel_credentials())
    assert done.value.exit_code == 2
    said = capsys.readouterr().err
    assert "device_id: 5000 characters, at most 64 allowed" in said
    assert "d" * 20 not in said
