"""Placing ready tasks on devices (capability, availability, free slots, spread, locality, labels,
affinity) and reading device twins of any daemon version into ``DeviceView``s."""

from __future__ import annotations

import json
import math
from types import MappingProxyType
from typing import Any

import pytest

from edgehub.hub.fleet.devices import TWINS
from edgehub.hub.goals import (
    BUILTIN_TOOLS,
    DeviceView,
    FleetCache,
    Plan,
    PlanDraft,
    Unplaced,
    assign,
    validate,
)
from edgehub.protocol.v1 import twin_pb2
from edgehub.sync.records import RecordUnreadable

NOW = 1_700_000_000.0


def dev(device_id: str, *extra: str, **over: Any) -> DeviceView:
    fields: dict[str, Any] = {"online": True, "tools": BUILTIN_TOOLS | set(extra)} | over
    if "labels" in fields:
        fields["labels"] = MappingProxyType(fields["labels"])
    if "memories" in fields:
        fields["memories"] = frozenset(fields["memories"])
    return DeviceView(device_id, **fields)


def plan(*tasks: dict[str, Any], fleet: list[DeviceView] | None = None) -> Plan:
    """A validated plan (against a fleet that can run anything, unless ``fleet`` is given)."""
    everything = [dev("any", "camera", "gpio", labels={"site": "hall-5", "gpu": "yes"})]
    return validate(PlanDraft.model_validate({"tasks": list(tasks)}), fleet or everything)


def task(id: str, *needs: str, **over: Any) -> dict[str, Any]:
    return {"id": id, "goal": f"do {id}", "needs": list(needs), "tools": [], "estimate_tokens": 10} | over


FORK = plan(task("scan"), task("left", "scan"), task("right", "scan"), task("join", "left", "right"))


def test_parallel_tasks_are_spread_over_two_devices() -> None:
    devices = [dev("edge-1", max_concurrent=4), dev("edge-2", max_concurrent=4)]
    placed = assign(FORK, FORK.ready({"scan"}), devices).placed
    assert set(placed) == {"left", "right"}
    assert set(placed.values()) == {"edge-1", "edge-2"}


def test_spread_wins_over_a_lighter_load_but_load_decides_otherwise() -> None:
    devices = [dev("edge-1", max_concurrent=4, load=0.1), dev("edge-2", max_concurrent=4, load=3.0)]
    assert dict(assign(FORK, ["scan"], devices).placed) == {"scan": "edge-1"}
    assert sorted(assign(FORK, ["left", "right"], devices).placed.values()) == ["edge-1", "edge-2"]


def test_the_only_device_takes_parallel_tasks_while_it_has_slots() -> None:
    result = assign(FORK, ["left", "right"], [dev("edge-1", max_concurrent=2, running=1)])
    assert dict(result.placed) == {"left": "edge-1"}
    assert result.unplaced == (
        Unplaced("right", "every device that could run it is full: edge-1 (1/2 running, 1 more sent)"),
    )


def test_only_devices_with_all_the_tools_are_chosen() -> None:
    p = plan(task("photo", tools=["camera", "read_file"]), task("plain"))
    devices = [dev("edge-1"), dev("edge-2", "camera")]
    assert dict(assign(p, ["photo"], devices).placed) == {"photo": "edge-2"}


def test_offline_and_draining_devices_are_skipped() -> None:
    devices = [dev("edge-1", online=False), dev("edge-2", draining=True), dev("edge-3", load=5.0)]
    assert dict(assign(FORK, ["scan"], devices).placed) == {"scan": "edge-3"}


def test_a_device_whose_disk_is_full_takes_no_new_task_and_the_reason_says_so() -> None:
    full = dev("edge-1", paused="store file system full: 0.4 MB free")
    assert dict(assign(FORK, ["scan"], [full, dev("edge-2", load=5.0)]).placed) == {"scan": "edge-2"}
    (why,) = assign(FORK, ["scan"], [full]).unplaced
    assert why.reason == (
        "every device with its tools is unavailable: edge-1 (paused: store file system full: 0.4 MB free)"
    )


def test_a_device_that_holds_related_memories_is_preferred() -> None:
    p = plan(task("oil", goal="Check the oil pressure history of pump P-3"))
    devices = [dev("edge-1"), dev("edge-2", memories={"pump", "p", "pressure"}, load=0.5)]
    assert dict(assign(p, ["oil"], devices).placed) == {"oil": "edge-2"}


def test_affinity_prefers_a_device_and_busy_slots_count_as_taken() -> None:
    devices = [dev("edge-1"), dev("edge-2")]
    assert dict(assign(FORK, ["scan"], devices, affinity={"scan": "edge-2"}).placed) == {"scan": "edge-2"}
    placed = assign(FORK, ["scan"], devices, affinity={"scan": "edge-2"}, busy={"edge-2": 2}).placed
    assert dict(placed) == {"scan": "edge-1"}


def test_labels_must_match_and_avoided_labels_exclude() -> None:
    devices = [
        dev("edge-1", labels={"site": "hall-5", "gpu": "yes"}),
        dev("edge-2", labels={"site": "hall-6"}),
    ]
    p = plan(task("a", labels={"site": "hall-5"}), task("b", avoid={"gpu": "yes"}), fleet=devices)
    assert dict(assign(p, ["a", "b"], devices).placed) == {"a": "edge-1", "b": "edge-2"}


def test_the_most_constrained_task_is_placed_first() -> None:
    """'free' could go anywhere; placed first, it would take the camera device's only slot."""
    p = plan(task("free"), task("photo", tools=["camera"]))
    devices = [dev("edge-1", "camera", max_concurrent=1), dev("edge-2", max_concurrent=1, load=2.0)]
    assert dict(assign(p, ["free", "photo"], devices).placed) == {"photo": "edge-1", "free": "edge-2"}


def test_ties_are_broken_by_device_id_whatever_the_order() -> None:
    devices = [dev("edge-b"), dev("edge-a"), dev("edge-c")]
    assert dict(assign(FORK, ["scan"], devices).placed) == {"scan": "edge-a"}
    assert assign(FORK, ["left", "right"], devices) == assign(FORK, ["right", "left"], devices[::-1])


def test_nothing_placeable_comes_back_with_a_reason_per_task() -> None:
    p = plan(
        task("photo", tools=["camera"]),
        task("gpio", tools=["gpio"]),
        task("site", labels={"site": "hall-5"}),
        task("busy"),
    )
    devices = [
        dev("edge-1", max_concurrent=1, running=1, labels={"site": "hall-6"}),
        dev("edge-2", "gpio", online=False),
        dev("edge-3", "gpio", draining=True),
    ]
    result = assign(p, ["photo", "gpio", "site", "busy"], devices)
    assert result.placed == {}
    assert result.unplaced == (
        Unplaced("photo", "no device offers camera"),
        Unplaced("gpio", "every device with its tools is unavailable: edge-2 (offline), edge-3 (draining)"),
        Unplaced("site", "no available device with its tools has the labels {'site': 'hall-5'}"),
        Unplaced("busy", "every device that could run it is full: edge-1 (1/1 running, 0 more sent)"),
    )
    assert assign(p, ["busy"], []).unplaced == (Unplaced("busy", "no devices"),)


def test_tasks_not_in_the_plan_are_refused() -> None:
    with pytest.raises(ValueError, match="tasks not in the plan: ghost"):
        assign(FORK, ["scan", "ghost"], [dev("edge-1")])


def stored(raw: dict[str, Any]) -> twin_pb2.DeviceTwin:
    """A JSON twin (what daemons of the release before write) as the hub reads it (``TWINS``)."""
    return TWINS.decode(json.dumps(raw).encode())


def read(raw: dict[str, Any], now: float) -> DeviceView:
    return DeviceView.from_twin(stored(raw), now)


def twin(**over: Any) -> dict[str, Any]:
    return {
        "device_id": "edge-1",
        "state": "running",
        "heartbeat_s": 5,
        "sent_at": NOW - 1,
        "version": "0.1.0",
        "hardware": {"arch": "aarch64", "cpus": 4, "kernel": "6.1"},
        "load": 1.5,
        "outbox_depth": 0,
        "agents_running": ["agent-1"],
        "max_concurrent": 3,
        "draining": False,
    } | over


def test_a_current_twin_is_read_in_full() -> None:
    view = read(twin(labels={"site": "hall-5"}, tools=["read_file", "camera", 7]), NOW)
    assert view.eligible
    assert (view.load, view.cpus, view.running, view.max_concurrent, view.free_slots) == (1.5, 4, 1, 3, 2)
    assert view.tools == {"read_file", "camera"}
    assert view.labels == {"site": "hall-5", "arch": "aarch64"}  # arch: reported by the device itself
    assert view.arch == "aarch64"


def test_a_twin_that_reports_paused_agents_is_not_eligible() -> None:
    reported = stored(twin())
    assert DeviceView.from_twin(reported, NOW).unavailable == ""
    reported.paused_reason = "store file system full"
    view = DeviceView.from_twin(reported, NOW)
    assert (view.eligible, view.unavailable) == (False, "paused: store file system full")


def test_a_device_is_selectable_by_its_hardware_profile_and_explicit_labels_win() -> None:
    reported = twin(
        profile={"name": "jetson-orin-nano", "settings": {}}, labels={"arch": "custom"}, model_name="qwen-3b"
    )
    view = read(reported, NOW)
    assert view.labels == {"arch": "custom", "profile": "jetson-orin-nano", "model": "qwen-3b"}
    assert view.matches({"model": "qwen-3b"}, {})
    assert view.matches({"profile": "jetson-orin-nano"}, {})
    assert not view.matches({"profile": "raspberry-pi-5"}, {})


def test_a_twin_from_an_old_daemon_takes_the_defaults() -> None:
    view = read({"device_id": "old", "state": "running", "sent_at": NOW}, NOW)
    assert view.online
    assert view.eligible
    assert view.tools == BUILTIN_TOOLS
    assert (view.running, view.max_concurrent, view.load, view.cpus) == (0, 2, 0.0, 1)
    assert (view.labels, view.model, view.memories) == ({}, "", frozenset())


@pytest.mark.parametrize(
    ("over", "online", "eligible"),
    [
        ({"sent_at": NOW - 60}, False, False),
        ({"state": "stopped"}, False, False),
        ({"draining": True}, True, False),
        ({"sent_at": "yesterday"}, False, False),
        ({"heartbeat_s": None}, False, False),
    ],
)
def test_online_and_draining_are_read_cautiously(over: dict[str, Any], online: bool, eligible: bool) -> None:
    view = read(twin(**over), NOW)
    assert (view.online, view.eligible) == (online, eligible)


def test_malformed_numbers_fall_back_to_cautious_values() -> None:
    view = read(
        twin(load=math.nan, max_concurrent="lots", agents_running=2, hardware=None, memories=["Pump ", 3]),
        NOW,
    )
    assert (view.load, view.max_concurrent, view.running, view.cpus) == (0.0, 2, 2, 1)
    assert view.memories == {"pump"}
    assert read(twin(agents_running=True, max_concurrent=math.inf), NOW).running == 0


def test_the_fleet_cache_rebuilds_a_view_only_when_its_twin_changed_and_judges_online_at_read() -> None:
    cache = FleetCache(max_age_s=0.0)
    a, b = stored(twin(device_id="a", sent_at=NOW)), stored(twin(device_id="b", sent_at=NOW))
    b2 = stored(twin(device_id="b", sent_at=NOW, load=0.25))
    first = cache.views([("a", 1, a), ("b", 1, b)], NOW)
    assert [v.online for v in first] == [True, True]
    again = cache.views([("a", 1, a), ("b", 2, b2)], NOW + 1)
    assert again[0] is first[0]  # same revision: the same view
    assert again[1].load == 0.25  # a new revision: rebuilt
    later = cache.views([("a", 1, a), ("b", 2, b2)], NOW + 60)  # no beats for a minute
    assert [v.online for v in later] == [False, False]
    with pytest.raises(RecordUnreadable):  # a twin without an id is unreadable: it never reaches the cache
        stored({"no": "id"})
    assert [v.device_id for v in cache.views([("a", 1, a)], NOW + 61)] == ["a"]  # b gone
    assert len(cache.views([], NOW + 62)) == 0


def test_the_fleet_cache_reuses_its_list_for_a_moment() -> None:
    cache = FleetCache(max_age_s=0.2)
    listed = cache.views([("a", 1, stored(twin(device_id="a")))], NOW)
    assert cache.views([], NOW + 0.1) is listed
    assert cache.views([], NOW + 0.3) == []
