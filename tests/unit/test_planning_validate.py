"""Validating a draft plan: each repair (recorded on the plan) and each rejection (with its reason), the
DAG's structure, and a property: whatever is accepted is acyclic and in topological order."""

from __future__ import annotations

import itertools
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgehub.hub.goals import DeviceView, Limits, PlanDraft, PlanRejected, validate
from edgehub.hub.goals.placement import BUILTIN_TOOLS


def task(id: str, *needs: str, **over: Any) -> dict[str, Any]:
    return {
        "id": id,
        "goal": f"do {id}",
        "needs": list(needs),
        "tools": ["read_file"],
        "estimate_tokens": 100,
    } | over


def draft(*tasks: dict[str, Any]) -> PlanDraft:
    return PlanDraft.model_validate({"tasks": list(tasks)})


def dev(device_id: str = "edge-1", *extra: str, **over: Any) -> DeviceView:
    fields: dict[str, Any] = {"online": True, "tools": BUILTIN_TOOLS | set(extra)} | over
    if "labels" in fields:
        fields["labels"] = MappingProxyType(fields["labels"])
    return DeviceView(device_id, **fields)


FLEET = [dev("edge-1"), dev("edge-2", "camera")]


def rejected(d: PlanDraft, fleet: list[DeviceView] = FLEET, limits: Limits | None = None) -> str:
    with pytest.raises(PlanRejected) as caught:
        validate(d, fleet, limits)
    return caught.value.reason


def test_a_fork_and_join_plan_is_ordered_by_level() -> None:
    plan = validate(
        draft(task("report", "left", "right"), task("right", "scan"), task("left", "scan"), task("scan")),
        FLEET,
    )
    assert plan.ids == ("scan", "right", "left", "report")
    assert plan.levels == (("scan",), ("right", "left"), ("report",))
    assert plan.dependants("scan") == ("right", "left")
    assert plan.joins == ("report",)
    assert plan.independent("left", "right")
    assert not plan.independent("scan", "report")
    assert plan.upstream("report") == {"scan", "left", "right"}
    assert plan.ready(set()) == ("scan",)
    assert plan.ready({"scan"}) == ("right", "left")
    assert plan.ready({"scan", "left"}) == ("right",)
    assert plan.total_tokens == 400
    assert plan.repairs == ()


def test_a_plan_is_immutable() -> None:
    plan = validate(draft(task("a", labels={"site": "x"})), [dev(labels={"site": "x"})])
    with pytest.raises(AttributeError):
        plan.tasks = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        plan.tasks[0].labels["site"] = "y"  # type: ignore[index]


def test_duplicate_ids_are_rejected() -> None:
    assert rejected(draft(task("a"), task("b"), task("a"))) == "duplicate task id 'a' (tasks 1 and 3)"


def test_unknown_and_self_needs_are_dropped_and_recorded() -> None:
    plan = validate(draft(task("a", "a", "ghost"), task("b", "a", "a")), FLEET)
    assert plan.task("a").needs == ()
    assert plan.task("b").needs == ("a",)
    assert plan.repairs == (
        "task 'a': dropped its need on itself",
        "task 'a': dropped the need 'ghost', which is no task of the plan",
    )


@pytest.mark.parametrize(
    ("tasks", "cycle"),
    [
        ([task("a", "b"), task("b", "a")], "a -> b -> a"),
        ([task("x"), task("a", "c"), task("b", "a"), task("c", "b")], "a -> c -> b -> a"),
        ([task("root"), task("a", "root", "b"), task("b", "a")], "a -> b -> a"),
    ],
)
def test_cycles_are_rejected_naming_the_cycle(tasks: list[dict[str, Any]], cycle: str) -> None:
    assert rejected(draft(*tasks)) == f"cycle: {cycle} (each task needs the next)"


def test_too_many_tasks_are_rejected() -> None:
    reason = rejected(draft(*(task(f"t{i}") for i in range(4))), limits=Limits(max_tasks=3))
    assert reason == "4 tasks; at most 3 are allowed"


def test_too_deep_a_plan_is_rejected_with_its_longest_chain() -> None:
    chain = draft(task("a"), task("b", "a"), task("c", "b"), task("side"))
    assert validate(chain, FLEET, Limits(max_depth=3)).levels[-1] == ("c",)
    reason = rejected(chain, limits=Limits(max_depth=2))
    assert (
        reason == "the plan is 3 levels deep; at most 2 are allowed "
        "(longest chain: c -> b -> a, each needing the next)"
    )


def test_a_tool_no_available_device_offers_is_rejected_naming_what_the_fleet_has() -> None:
    reason = rejected(draft(task("a", tools=["teleport"])), [dev("edge-1")])
    assert reason.startswith(
        "task 'a' needs the tool 'teleport', which no online, non-draining device offers"
    )
    assert "(they offer: finish, read_file, recall, remember, run_command, write_file)" in reason


def test_a_tool_only_on_offline_or_draining_devices_is_rejected() -> None:
    fleet = [dev("edge-1"), dev("edge-2", "camera", online=False), dev("edge-3", "camera", draining=True)]
    assert "needs the tool 'camera'" in rejected(draft(task("a", tools=["camera"])), fleet)


def test_tool_names_differing_in_case_or_separators_are_repaired() -> None:
    plan = validate(draft(task("a", tools=[" Read_File", "run command", "CAMERA", "read_file"])), FLEET)
    assert plan.task("a").tools == ("read_file", "run_command", "camera")
    assert plan.repairs == (
        "task 'a': tool ' Read_File' read as 'read_file'",
        "task 'a': tool 'run command' read as 'run_command'",
        "task 'a': tool 'CAMERA' read as 'camera'",
    )


def test_an_ambiguous_tool_name_is_not_guessed() -> None:
    fleet = [dev("edge-1", "read-file")]
    assert "needs the tool 'Read File'" in rejected(draft(task("a", tools=["Read File"])), fleet)


def test_tools_spread_over_two_devices_do_not_make_a_task_placeable() -> None:
    fleet = [dev("edge-1", "camera"), dev("edge-2", "gpio")]
    reason = rejected(draft(task("a", tools=["camera", "gpio"])), fleet)
    assert reason == "task 'a': no online, non-draining device has all of the tools camera, gpio"


def test_labels_no_available_device_matches_are_rejected() -> None:
    fleet = [dev("edge-1", labels={"site": "hall-5"}), dev("edge-2", labels={"site": "hall-6"}, online=False)]
    assert validate(draft(task("a", labels={"site": "hall-5"})), fleet).task("a").labels == {"site": "hall-5"}
    reason = rejected(draft(task("a", labels={"site": "hall-6"})), fleet)
    assert (
        reason == "task 'a': no online, non-draining device has all of the tools read_file "
        "and the labels {'site': 'hall-6'}"
    )
    reason = rejected(draft(task("a", tools=[], avoid={"site": "hall-5"})), fleet)
    assert reason == "task 'a': no online, non-draining device has none of the labels {'site': 'hall-5'}"


def test_a_fleet_with_no_available_device_rejects_every_plan() -> None:
    fleet = [dev("edge-1", online=False), dev("edge-2", draining=True)]
    assert rejected(draft(task("a", tools=[])), fleet) == (
        "no device is online and taking work (edge-1 (offline), edge-2 (draining))"
    )
    assert rejected(draft(task("a")), []) == "no device is online and taking work (the fleet is empty)"


def test_budgets_are_enforced_with_the_numbers() -> None:
    limits = Limits(budget_tokens=1000, task_tokens=600)
    big = draft(
        task("a", estimate_tokens=700), task("b", estimate_tokens=601), task("c", estimate_tokens=600)
    )
    assert (
        rejected(big, limits=limits)
        == "task estimates over the per-task limit of 600 tokens (a: 700, b: 601)"
    )
    many = draft(task("a", estimate_tokens=600), task("b", estimate_tokens=401))
    assert (
        rejected(many, limits=limits) == "the tasks estimate 1001 tokens in total; the goal's budget is 1000"
    )
    assert validate(draft(task("a", estimate_tokens=600), task("b", estimate_tokens=400)), FLEET, limits)


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"Limits\.max_depth must be at least 1, not 0"):
        Limits(max_depth=0)


IDS = [f"t{i}" for i in range(8)]


@st.composite
def drafts(draw: st.DrawFn) -> PlanDraft:
    """Drafts with any needs a model could write: unknown ids, itself, repeats, cycles."""
    ids = draw(st.lists(st.sampled_from(IDS), min_size=1, max_size=8, unique=True))
    needs = st.lists(st.sampled_from([*IDS, "ghost"]), max_size=4)
    return draft(*(task(i, *draw(needs)) for i in ids))


def acyclic(d: PlanDraft) -> bool:
    """Brute force: repeatedly remove tasks whose (known, other) needs are all removed."""
    ids = {t.id for t in d.tasks}
    left = {t.id: {n for n in t.needs if n in ids and n != t.id} for t in d.tasks}
    while True:
        free = {i for i, ns in left.items() if not ns & left.keys()}
        if not free:
            return not left
        left = {i: ns for i, ns in left.items() if i not in free}


@settings(max_examples=300, deadline=None)
@given(drafts())
def test_a_plan_is_accepted_exactly_when_acyclic_and_is_topologically_ordered(d: PlanDraft) -> None:
    limits = Limits(max_depth=8)
    if not acyclic(d):
        reason = rejected(d, limits=limits)
        cycle = reason.removeprefix("cycle: ").removesuffix(" (each task needs the next)").split(" -> ")
        needs = {t.id: t.needs for t in d.tasks}
        assert cycle[0] == cycle[-1]
        assert all(b in needs[a] for a, b in itertools.pairwise(cycle)), reason
        return
    plan = validate(d, FLEET, limits)
    assert sorted(plan.ids) == sorted(t.id for t in d.tasks)
    seen: set[str] = set()
    for t in plan.tasks:
        assert set(t.needs) <= seen, f"{t.id} comes before what it needs"
        assert t.level == 1 + max((plan.task(n).level for n in t.needs), default=-1)
        seen.add(t.id)
    for level in plan.levels:
        assert all(plan.independent(a, b) for a in level for b in level if a != b)
