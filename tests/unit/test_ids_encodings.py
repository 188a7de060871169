"""The id rule (``edgehub.protocol.ids``) and the id encodings into NATS names, as properties over
arbitrary strings (hypothesis): subject tokens, KV keys and durable consumer names are injective, invert
where they have a decoder, are valid for NATS, and leave today's valid ids unchanged."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgehub.hub.goals.record import may_split, new_record
from edgehub.protocol import subjects
from edgehub.protocol.errors import ErrorCode
from edgehub.protocol.ids import (
    DEVICE_ID_MAX,
    ID_MAX,
    ID_PATTERN,
    NAME_PATTERN,
    InvalidId,
    check_id,
    check_ids,
    holder,
    id_of_key,
    is_id,
    kv_key,
)
from edgehub.protocol.v1 import events_pb2, hub_pb2
from edgehub.sync.applier import decode
from edgehub.sync.commands import consumer_name, decode_command, new_command
from edgehub.sync.errors import MessageRejected

FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
pairs = st.tuples(st.text(), st.text())
valid_ids = st.from_regex(ID_PATTERN, fullmatch=True)
device_ids = st.from_regex(NAME_PATTERN, fullmatch=True)
# hypothesis rarely draws two different strings with the same encoding by chance: also try pairs built
# from each other's encodings (the attack: an id that IS another id's escaped form)
crafted = st.text().flatmap(
    lambda a: st.sampled_from(
        [kv_key(a), consumer_name(a).removeprefix("edge-"), subjects.token(a or "x")]
    ).map(lambda b: (a, b))
)

KV_KEY_OK = re.compile(r"^[-/_=a-zA-Z0-9]+(\.[-/_=a-zA-Z0-9]+)*$")
"""What nats-server accepts as a KV key: key characters, no empty token between dots."""


def _token_ok(tok: str) -> bool:
    return bool(tok) and not re.search(r"[.*>\s]", tok) and tok.isascii() and tok.isprintable()


@FAST
@given(st.one_of(pairs, crafted))
def test_kv_key_is_injective_and_inverts(pair: tuple[str, str]) -> None:
    a, b = pair
    if kv_key(a) == kv_key(b):
        assert a == b
    assert id_of_key(kv_key(a)) == a


@FAST
@given(st.text())
def test_every_kv_key_is_valid_for_nats(id_: str) -> None:
    assert KV_KEY_OK.match(kv_key(id_))


@FAST
@given(valid_ids)
def test_a_valid_id_is_its_own_key_unless_nats_refuses_it(id_: str) -> None:
    key = kv_key(id_)
    assert key == id_ or ".." in id_ or id_.endswith(".")


def test_the_reported_kv_collision_is_gone() -> None:
    assert kv_key("dev:1") != kv_key("x-6465763a31")
    assert kv_key("x-6465763a31") == "x-6465763a31"  # a valid id keeps its key


@FAST
@given(st.one_of(pairs, crafted))
def test_subject_token_is_injective_and_inverts(pair: tuple[str, str]) -> None:
    a, b = (s or "x" for s in pair)
    if subjects.token(a) == subjects.token(b):
        assert a == b
    assert subjects.untoken(subjects.token(a)) == a


@FAST
@given(st.text(min_size=1))
def test_every_subject_token_is_one_valid_token(value: str) -> None:
    assert _token_ok(subjects.token(value))


@FAST
@given(valid_ids)
def test_a_valid_id_keeps_its_token_but_dots(id_: str) -> None:
    assert subjects.token(id_) == id_.replace(".", "%2E")


def test_the_wide_character_token_collision_is_gone() -> None:
    # "%2028" was both U+2028 (a space NATS splits on) and " 28"
    assert subjects.token("\u2028") != subjects.token(" 28")


@FAST
@given(st.one_of(pairs, crafted))
def test_consumer_name_is_injective(pair: tuple[str, str]) -> None:
    a, b = pair
    if consumer_name(a) == consumer_name(b):
        assert a == b


@FAST
@given(st.text())
def test_every_consumer_name_is_valid_for_nats(id_: str) -> None:
    name = consumer_name(id_)
    assert _token_ok(name)
    assert "/" not in name
    assert "\\" not in name


@FAST
@given(device_ids)
def test_a_valid_device_id_gives_a_short_consumer_name(id_: str) -> None:
    """The domain the length bound holds on: valid device ids (the only ones a consumer is made for)."""
    name = consumer_name(id_)
    assert len(name) <= len("edge-") + DEVICE_ID_MAX <= 255
    if "." not in id_:
        assert name == f"edge-{id_}"  # the name earlier releases gave it


def test_the_reported_consumer_collisions_are_gone() -> None:
    assert consumer_name("dev.1") != consumer_name("x6465762e31")
    base = "plant-north.line-03.station-12.robot-arm-controller-unit-000"
    assert consumer_name(base + "1") != consumer_name(base + "2")


@FAST
@given(st.text())
def test_check_id_accepts_exactly_the_pattern(value: str) -> None:
    if re.fullmatch(ID_PATTERN.strip("^$"), value):
        assert check_id(value, "agent_id") == value
        assert is_id(value)
    else:
        with pytest.raises(InvalidId) as err:
            check_id(value, "agent_id")
        assert err.value.code is ErrorCode.INVALID_ARGUMENT
        assert err.value.message.startswith("agent_id")
        assert len(err.value.message) < 200  # never the input itself


def test_an_oversized_id_is_named_not_echoed() -> None:
    with pytest.raises(InvalidId) as err:
        check_id("d" * 5000, "device_id", max_len=DEVICE_ID_MAX)
    assert "device_id" in err.value.message
    assert "5000 characters" in err.value.message
    assert "d" * 20 not in err.value.message


def test_the_ids_the_hub_makes_fit() -> None:
    goal = "g-0123456789ab"
    task = "t" * 32  # draft.MAX_ID
    for made in (f"agent-{'a' * 12}", f"cmd-{'f' * 32}", f"mig-{'0' * 12}", f"{goal}-{task}-99"):
        assert check_id(made, "id")
    assert len(f"{goal}-{task}-99-{task}-99") <= ID_MAX  # one subgoal level deeper


class _Msg:
    """What ``decode_command`` and the applier's ``decode`` read of a NATS message."""

    def __init__(self, subject: str, data: bytes) -> None:
        self.subject, self.data = subject, data


def test_a_command_holding_a_bad_id_is_rejected_by_the_edge() -> None:
    cmd = new_command("dev-1", "operator:olga")
    cmd.stop_agent.agent_id = "a" * 5000
    with pytest.raises(MessageRejected, match="agent_id: 5000 characters") as err:
        decode_command(_Msg(subjects.commands("dev-1"), cmd.SerializeToString()), "dev-1")  # type: ignore[arg-type]
    assert "a" * 20 not in err.value.reason


@pytest.mark.parametrize("agent", ["a" * (ID_MAX + 1), "a b", "*"])
def test_an_event_whose_subject_names_a_bad_id_is_rejected_by_the_applier(agent: str) -> None:
    event = events_pb2.EdgeEvent(schema_version=1, device_id="dev-1", agent_id=agent, seq=1)
    msg = _Msg(subjects.events("dev-1", agent), event.SerializeToString())
    with pytest.raises(MessageRejected, match="agent_id"):
        decode(msg)  # type: ignore[arg-type]


def test_an_event_holding_a_bad_id_in_its_payload_is_rejected_by_the_applier() -> None:
    event = events_pb2.EdgeEvent(schema_version=1, device_id="dev-1", agent_id="a-1", seq=1)
    event.task_result.agent_id = "a-1"
    event.task_result.task_id = "t" * 5000
    with pytest.raises(MessageRejected, match="task_id: 5000 characters"):
        decode(_Msg(subjects.events("dev-1", "a-1"), event.SerializeToString()))  # type: ignore[arg-type]


def test_sub_goals_stop_before_their_agent_ids_outgrow_the_id_rule() -> None:
    """The planner's ids nest (``{goal}-{task}-{attempt}``): however deep the operator allows, a goal
    splits only while the ids two levels down still fit."""
    record = new_record("text", by="operator:olga", planner=0)
    longest_task, attempt = "t" * 32, 99
    while may_split(record, max_goal_depth=8):
        child = f"{record.goal_id}-{longest_task}-{attempt}"
        record = new_record("text", by="hub", planner=0, depth=record.depth + 1, goal_id=child)
    assert record.depth >= 2  # the default depth limit (2) is still reachable
    agent_id = f"{record.goal_id}-{longest_task}-{attempt}"
    assert check_id(agent_id, "agent_id")
    assert check_id(f"{agent_id}-start", "command_id")


def test_a_task_field_holds_a_task_id_or_goal_slash_task() -> None:
    cmd = new_command("dev-1", "hub")
    cmd.start_agent.agent_id = "g-0123456789ab-collect-1"
    cmd.start_agent.task_id = "g-0123456789ab/collect"  # what the planner sends
    assert decode_command(_Msg(subjects.commands("dev-1"), cmd.SerializeToString()), "dev-1") == cmd  # type: ignore[arg-type]
    for bad in ("g-1/a/b", "g-1/", "/a", "t" * 300):
        cmd.start_agent.task_id = bad
        with pytest.raises(MessageRejected, match="task_id"):
            decode_command(_Msg(subjects.commands("dev-1"), cmd.SerializeToString()), "dev-1")  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["leaf:gw", "nats:alice", "nats:a.b-c_1", "dev-1"])
def test_a_revocation_names_a_device_or_another_credential_holder(value: str) -> None:
    check_ids(hub_pb2.RevokeDeviceRequest(device_id=value))


@pytest.mark.parametrize("value", ["dev:1", "nats:", "leaf:bad name", "nats:" + "a" * 65, ":x", "nats:-a"])
def test_a_holder_of_no_known_kind_or_with_a_bad_name_is_refused(value: str) -> None:
    with pytest.raises(InvalidId, match="device_id"):
        check_ids(hub_pb2.RevokeDeviceRequest(device_id=value))


def test_only_a_revocation_takes_a_holder_not_a_device_field_elsewhere() -> None:
    assert holder("nats", "alice") == "nats:alice"
    with pytest.raises(InvalidId, match="device_id"):
        check_ids(hub_pb2.StartAgentRequest(device_id="leaf:gw", goal="x"))


def test_dead_letter_headers_are_one_printable_line_each() -> None:
    """A reason quotes what a device sent: a line break would add headers of its choosing."""
    from edgehub.sync.errors import dead_letter_headers

    headers = dead_letter_headers("bad\r\nNats-Msg-Id: x", "edgehub.ev.d.a" + "\x00" * 400)
    assert set(headers) == {"Edgehub-Reason", "Edgehub-Subject"}
    assert all(v.isprintable() for v in headers.values())
    assert "\n" not in headers["Edgehub-Reason"]
    assert len(headers["Edgehub-Subject"]) <= 256
