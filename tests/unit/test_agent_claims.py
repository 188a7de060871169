"""Who may write for an agent id (``hub.fleet.agents``): the planner's agent ids are the hub's namespace,
which no device's first event registers; any other unknown id is registered by its first event; a
known agent is its owner's only. Checked over arbitrary ids (hypothesis) and over the ids the
scheduler really mints."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from edgehub.hub.fleet.agents import AgentRecord, fence, in_hub_namespace
from edgehub.hub.goals.schedule import advance, attempt_id
from edgehub.protocol.v1 import agent_pb2, events_pb2
from tests.unit.test_planning_schedule import CFG, T0, devices, goal, t

S = agent_pb2


def step(device: str, agent_id: str) -> events_pb2.EdgeEvent:
    event = events_pb2.EdgeEvent(device_id=device, agent_id=agent_id, seq=1)
    event.step.CopyFrom(S.StepEvent(agent_id=agent_id, step=1, status=S.AGENT_STATUS_RUNNING))
    return event


def test_every_agent_id_the_planner_mints_is_in_the_hubs_namespace() -> None:
    fleet = devices("dev-a", "dev-b")
    record = goal([t("a"), t("b-with-dashes"), t("c", ["a"])], fleet)
    starts = advance(record, fleet, Counter(), T0, CFG, "hub").commands
    assert len(starts) == 2
    for cmd in starts:
        assert in_hub_namespace(cmd.start_agent.agent_id)
        assert fence(None, step("dev-x", cmd.start_agent.agent_id))  # no device claims it unregistered
    sibling = f"{record.goal_id}-c-1"  # not dispatched yet, and predictable
    assert "is the hub's to assign" in fence(None, step("dev-a", sibling))


def test_a_reserved_agent_is_its_devices_only() -> None:
    reserved = AgentRecord(agent_id="g-0123456789ab-a-1", device_id="dev-a", status=S.AGENT_STATUS_PENDING)
    assert fence(reserved, step("dev-a", reserved.agent_id)) == ""
    assert "belongs to device dev-a" in fence(reserved, step("dev-b", reserved.agent_id))


@settings(max_examples=300, deadline=None)
@given(agent_id=st.text(min_size=1, max_size=80), device=st.text(min_size=1, max_size=20))
def test_an_unknown_id_outside_the_namespace_is_registered_by_its_first_event(
    agent_id: str, device: str
) -> None:
    why = fence(None, step(device, agent_id))
    assert (why == "") is (not in_hub_namespace(agent_id))


@settings(max_examples=300, deadline=None)
@given(
    goal_hex=st.text("0123456789abcdef", min_size=12, max_size=12),
    task=st.text(min_size=1, max_size=40),
    attempt=st.integers(1, 1000),
)
def test_any_planner_shaped_id_is_reserved(goal_hex: str, task: str, attempt: int) -> None:
    assert in_hub_namespace(f"g-{goal_hex}-{task}-{attempt}")


def test_a_replanned_task_reusing_an_id_gets_agent_ids_of_its_own() -> None:
    first = attempt_id("g-0123456789ab", "b", 1, 1)
    again = attempt_id("g-0123456789ab", "b", 2, 1)
    assert first == "g-0123456789ab-b-1"  # the first revision's ids are as before
    assert again != first
    assert in_hub_namespace(again)


@settings(max_examples=300, deadline=None)
@given(
    one=st.tuples(
        st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True), st.integers(0, 5), st.integers(1, 20)
    ),
    two=st.tuples(
        st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True), st.integers(0, 5), st.integers(1, 20)
    ),
)
def test_attempt_ids_of_one_goal_never_collide(one: tuple[str, int, int], two: tuple[str, int, int]) -> None:
    def key(task: str, revision: int, attempt: int) -> tuple[str, int, int]:
        return task, max(revision, 1), attempt  # revisions 0 (an older record) and 1 are the first plan

    if key(*one) != key(*two):
        assert attempt_id("g-0123456789ab", *one) != attempt_id("g-0123456789ab", *two)
