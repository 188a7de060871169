"""The hub's side of fleet policy without a hub: which devices a selector picks, what text a push
may carry, the CLI's selector syntax, and how ``policy status`` names a device's state."""

from __future__ import annotations

from types import MappingProxyType

import pytest
import typer

from edgehub.hub.cli.policy import parse_selector
from edgehub.hub.errors import Refused
from edgehub.hub.fleet.policies import _state, check_text, selected
from edgehub.hub.goals.placement import DeviceView
from edgehub.protocol.errors import EdgehubError, ErrorCode
from edgehub.protocol.v1 import hub_pb2, policy_pb2

H = hub_pb2
FLEET = [
    DeviceView("pi-1", labels=MappingProxyType({"site": "a", "profile": "raspberry-pi-5"})),
    DeviceView("pi-2", labels=MappingProxyType({"site": "b"}), hub_labels=MappingProxyType({"site": "a"})),
    DeviceView("ipc-1", labels=MappingProxyType({"site": "b", "profile": "x86-ipc"})),
]


@pytest.mark.parametrize(
    ("target", "picked"),
    [
        (H.PolicyTarget(all=True), ["ipc-1", "pi-1", "pi-2"]),
        (H.PolicyTarget(labels={"site": "a"}), ["pi-1", "pi-2"]),  # the hub's label wins over the twin's
        (H.PolicyTarget(labels={"site": "b", "profile": "x86-ipc"}), ["ipc-1"]),
        (H.PolicyTarget(device_ids=["pi-9", "pi-1", "pi-1"]), ["pi-1", "pi-9"]),  # named: even unseen
        (H.PolicyTarget(labels={"site": "z"}), []),
    ],
)
def test_a_selector_picks_by_all_ids_or_labels(target: H.PolicyTarget, picked: list[str]) -> None:
    assert selected(target, FLEET) == picked


@pytest.mark.parametrize(
    "target",
    [H.PolicyTarget(), H.PolicyTarget(all=True, device_ids=["pi-1"]), H.PolicyTarget(device_ids=["bad id!"])],
)
def test_a_selector_that_is_none_or_two_at_once_or_a_bad_id_is_refused(target: H.PolicyTarget) -> None:
    with pytest.raises(EdgehubError) as refused:
        selected(target, FLEET)
    assert refused.value.code == ErrorCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("text", "why"),
    [("rules = [", "not valid TOML"), ("[[rules]]\nid = 'x'\n", "no integer `version`"),
     ("version = true\n", "no integer `version`"), ("version = 2\n" + "#" * 300_000, "at most")],
)  # fmt: skip
def test_the_hub_refuses_text_that_is_no_versioned_toml(text: str, why: str) -> None:
    with pytest.raises(Refused, match=why):
        check_text(text)
    check_text("version = 2\n")


def test_the_cli_selector_is_all_ids_or_labels_never_both() -> None:
    assert parse_selector("all").all
    assert list(parse_selector("pi-1, pi-2").device_ids) == ["pi-1", "pi-2"]
    assert dict(parse_selector("site=a,line=3").labels) == {"site": "a", "line": "3"}
    for bad in ("site=a,pi-1", "", "site="):
        with pytest.raises(typer.Exit):
            parse_selector(bad)


@pytest.mark.parametrize(
    ("sent", "running", "state"),
    [
        (0, policy_pb2.RunningPolicy(source="file"), "local"),
        (3, policy_pb2.RunningPolicy(source="hub", version=3), "current"),
        (3, policy_pb2.RunningPolicy(source="hub", version=2, refused_version=3), "refused"),
        (3, policy_pb2.RunningPolicy(source="default"), "pending"),
    ],
)
def test_status_names_each_devices_state(sent: int, running: policy_pb2.RunningPolicy, state: str) -> None:
    assert _state(H.DevicePolicy(device_id="d", sent_version=sent, running=running)) == state
