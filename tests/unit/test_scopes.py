"""Operator scopes without a server (``edgehub.hub.fleet.scopes``): which devices a scope covers, that
``within`` is sound for every labelling (a scoped admin can never hand out more than it has), what a
request may hold, and a goal's devices by the labels the hub assigned, never the twin's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgehub.hub.errors import Refused
from edgehub.hub.fleet.scopes import FLEET, MAX_LABELS, Scope, parse_labels
from edgehub.hub.goals import DeviceView
from edgehub.hub.goals.schedule import goal_devices
from edgehub.hub.goals.store import CODEC as GOALS
from edgehub.hub.operators import TOKENS_CODEC
from edgehub.protocol.ids import InvalidId
from edgehub.protocol.v1 import goals_pb2, hub_pb2, scope_pb2
from edgehub.sync.records import ProtoCodec, RecordUnreadable


def scope(*selectors: dict[str, str], devices: tuple[str, ...] = ()) -> Scope:
    return Scope(frozenset(frozenset(s.items()) for s in selectors), frozenset(devices))


SITE_A = scope({"site": "a"})


def test_a_scope_covers_devices_by_hub_labels_or_by_id_and_none_without_labels() -> None:
    assert SITE_A.covers("d1", {"site": "a", "line": "3"})
    assert not SITE_A.covers("d2", {"site": "b"})
    assert not SITE_A.covers("d3", {})  # unlabelled: only the whole fleet or its id reach it
    assert scope({"site": "a"}, devices=("d3",)).covers("d3", {})
    both = scope({"site": "a", "line": "3"})
    assert both.covers("d1", {"site": "a", "line": "3"})
    assert not both.covers("d1", {"site": "a"})  # a selector's labels are all required
    assert scope({"site": "a"}, {"site": "b"}).covers("d2", {"site": "b"})  # any one selector
    assert FLEET.covers("anything", {})
    assert FLEET.fleet_wide


def test_within_is_containment_by_what_scopes_say() -> None:
    assert SITE_A.within(FLEET)
    assert not FLEET.within(SITE_A)  # no escalation to the whole fleet
    assert scope({"site": "a", "line": "1"}).within(SITE_A)  # narrower
    assert not SITE_A.within(scope({"site": "a", "line": "1"}))
    assert not scope({"site": "b"}).within(SITE_A)
    # a device id is within only a scope that names it: labels change, ids do not
    assert not scope(devices=("d1",)).within(SITE_A)
    assert scope(devices=("d1",)).within(scope({"site": "a"}, devices=("d1", "d2")))


labels = st.dictionaries(st.sampled_from("abc"), st.sampled_from("xy"), max_size=3)
scopes = st.builds(
    lambda sels, devs: scope(*sels, devices=tuple(devs)),
    st.lists(labels.filter(bool), max_size=3),
    st.lists(st.sampled_from(["d1", "d2", "d3"]), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(scopes, scopes, st.sampled_from(["d1", "d2", "d3", "d4"]), labels)
def test_a_scope_within_another_covers_no_device_the_other_does_not(
    mine: Scope, other: Scope, device: str, labelled: dict[str, str]
) -> None:
    if mine.within(other) and mine.covers(device, labelled):
        assert other.covers(device, labelled)


def test_a_requested_scope_is_bounded_and_every_label_and_device_is_an_id() -> None:
    ok = scope_pb2.Scope(selectors=[scope_pb2.LabelSelector(labels={"site": "a"})], devices=["d1"])
    assert Scope.checked(ok) == scope({"site": "a"}, devices=("d1",))
    assert Scope.from_proto(Scope.checked(ok).to_proto()) == Scope.checked(ok)
    empty_selector = scope_pb2.Scope(selectors=[scope_pb2.LabelSelector()])
    with pytest.raises(Refused, match="empty selector"):
        Scope.checked(empty_selector)
    with pytest.raises(InvalidId):
        Scope.checked(scope_pb2.Scope(devices=["d" * 5000]))
    with pytest.raises(InvalidId):
        Scope.checked(scope_pb2.Scope(selectors=[scope_pb2.LabelSelector(labels={"site": "a b"})]))
    with pytest.raises(Refused, match="at most"):
        Scope.checked(scope_pb2.Scope(selectors=[scope_pb2.LabelSelector(labels={"k": "v"})] * 17))
    assert str(scope({"site": "a", "line": "1"}, devices=("d1",))) == "line=1,site=a; devices d1"
    assert str(FLEET) == "the whole fleet"


def test_labels_are_parsed_from_key_value_text_and_bounded() -> None:
    assert parse_labels(["site=plant-a", "line=3,zone=b"]) == {"site": "plant-a", "line": "3", "zone": "b"}
    with pytest.raises(Refused, match="not KEY=VALUE"):
        parse_labels(["site"])
    with pytest.raises(InvalidId):
        parse_labels(["site=plant a"])
    with pytest.raises(Refused, match=f"at most {MAX_LABELS}"):
        parse_labels([f"k{i}=v" for i in range(MAX_LABELS + 1)])


def test_a_goal_runs_only_on_devices_its_scope_covers_by_hub_labels_not_by_twin_claims() -> None:
    honest = DeviceView("dev-a", online=True, labels={"site": "a"}, hub_labels={"site": "a"})
    liar = DeviceView("dev-c", online=True, labels={"site": "a"}, hub_labels={"site": "c"})
    unlabelled = DeviceView("dev-u", online=True, labels={"site": "a"})
    fleet = [honest, liar, unlabelled]
    scoped = goals_pb2.Goal(labels={"site": "a"}, scope=SITE_A.to_proto())
    assert goal_devices(fleet, scoped) == [honest]
    unscoped = goals_pb2.Goal(labels={"site": "a"})  # a fleet-wide goal selects by what devices report
    assert goal_devices(fleet, unscoped) == fleet


def test_a_hub_of_the_release_before_cannot_read_a_scoped_token_or_goal_as_a_fleet_wide_one() -> None:
    token = hub_pb2.ApiTokenInfo(name="a-op", role=hub_pb2.ROLE_OPERATOR, scope=SITE_A.to_proto())
    goal = goals_pb2.Goal(goal_id="g-000000000001", text="x", scope=SITE_A.to_proto())
    for codec, record, before in ((TOKENS_CODEC, token, 1), (GOALS, goal, 2)):
        older = ProtoCodec(type(record), before)  # what that release decodes with
        with pytest.raises(RecordUnreadable, match="schema version"):
            older.decode(codec.encode(record))
    assert Scope.from_proto(TOKENS_CODEC.decode(TOKENS_CODEC.encode(token)).scope) == SITE_A


def test_every_api_method_says_what_it_does_for_a_scoped_caller() -> None:
    """docs/identity.md's scope table names each HubService method: a new method needs a decision."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "identity.md").read_text()
    table = text.split("## Scopes", 1)[1].split("\n\n")[2]
    first_column = "".join(row.split("|")[1] for row in table.splitlines())
    named = set(re.findall(r"\b[A-Z][A-Za-z]+\b", first_column))
    methods = {m.name for m in hub_pb2.DESCRIPTOR.services_by_name["HubService"].methods}
    assert methods - named == set(), "add these methods to docs/identity.md's scope table"
    assert named - methods == set(), "no such methods"
