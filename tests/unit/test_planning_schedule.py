"""The goal scheduler (``goals/schedule.py``) as a function of the record, the fleet and the clock."""

from __future__ import annotations

from collections import Counter
from typing import Any

from edgehub.hub.config import PlannerConfig
from edgehub.hub.goals import DeviceView, PlanDraft, validate
from edgehub.hub.goals.planner import Planned
from edgehub.hub.goals.record import adopt_plan, new_record, synthesis, task_text
from edgehub.hub.goals.schedule import advance, apply_result, busy_of, end_goal, finish_synthesis
from edgehub.protocol.v1 import agent_pb2, goals_pb2, task_pb2

S = agent_pb2
G = goals_pb2
T0 = 1_000_000.0
CFG = PlannerConfig(retry_backoff_s=2.0, max_retries=1, max_replans=0)


def devices(
    *ids: str, online: bool = True, tools: tuple[str, ...] = ("run_command", "finish")
) -> list[DeviceView]:
    return [DeviceView(device_id=d, online=online, tools=frozenset(tools), max_concurrent=2) for d in ids]


def goal(tasks: list[dict[str, Any]], fleet: list[DeviceView], approve_tools: tuple[str, ...] = ()) -> G.Goal:
    record = new_record(
        "inspect",
        by="op",
        labels={},
        budget=None,
        approve_tools=list(approve_tools),
        planner=G.GOAL_PLANNER_OPERATOR,
        now=T0,
    )
    draft = PlanDraft.model_validate({"tasks": tasks})
    adopt_plan(record, Planned(validate(draft, fleet), 1), "submitted", T0)
    return record


def t(tid: str, needs: list[str] | None = None, tools: list[str] | None = None) -> dict[str, Any]:
    return {
        "id": tid,
        "goal": f"do {tid}",
        "needs": needs or [],
        "tools": tools or [],
        "estimate_tokens": 100,
    }


def finish(record: G.Goal, tid: str, status: int = S.AGENT_STATUS_FINISHED, tokens: int = 5) -> Any:
    r = task_pb2.TaskResult(
        task_id=f"{record.goal_id}/{tid}",
        agent_id=record.tasks[tid].agent_id,
        status=status,
        answer=tid,
    )
    r.usage.completion_tokens = tokens
    return r


def test_a_fork_goes_to_two_devices_and_the_join_waits_for_both() -> None:
    fleet = devices("dev-a", "dev-b")
    record = goal([t("a"), t("b"), t("c", ["a", "b"])], fleet)
    fx = advance(record, fleet, Counter(), T0, CFG, "hub")
    starts = {c.start_agent.task_id.split("/")[1]: c.device_id for c in fx.commands}
    assert set(starts) == {"a", "b"}
    assert starts["a"] != starts["b"]
    assert record.tasks["c"].status == G.TASK_STATUS_WAITING
    apply_result(record, "a", finish(record, "a"), starts["a"], T0 + 1, CFG)
    assert not advance(record, fleet, Counter(), T0 + 1, CFG, "hub").commands  # b is not done
    apply_result(record, "b", finish(record, "b"), starts["b"], T0 + 2, CFG)
    fx = advance(record, fleet, Counter(), T0 + 2, CFG, "hub")
    (join,) = fx.commands
    assert "- a: a" in join.start_agent.goal
    assert "- b: b" in join.start_agent.goal
    apply_result(record, "c", finish(record, "c"), join.device_id, T0 + 3, CFG)
    fx = advance(record, fleet, Counter(), T0 + 3, CFG, "hub")
    assert fx.ended
    assert record.status == G.GOAL_STATUS_DONE
    assert record.answer == "c"
    assert record.usage.tokens == 15


def test_a_full_device_is_not_given_more_and_the_reason_is_recorded() -> None:
    fleet = devices("dev-a")
    record = goal([t("a"), t("b"), t("c")], fleet)
    fx = advance(record, fleet, Counter({"dev-a": 1}), T0, CFG, "hub")
    assert len(fx.commands) == 1  # two slots, one taken by another goal's dispatch
    waiting = [s for s in record.tasks.values() if s.status == G.TASK_STATUS_WAITING]
    assert len(waiting) == 2
    assert all("full" in s.waiting_for for s in waiting)


def test_a_device_gone_offline_has_its_task_stopped_there_and_retried_elsewhere_after_backoff() -> None:
    fleet = devices("dev-a", "dev-b")
    record = goal([t("a")], fleet)
    (start,) = advance(record, fleet, Counter(), T0, CFG, "hub").commands
    gone = start.device_id
    other = "dev-b" if gone == "dev-a" else "dev-a"
    now_fleet = [d for d in fleet if d.device_id != gone] + devices(gone, online=False)
    fx = advance(record, now_fleet, Counter(), T0 + 5, CFG, "hub")
    (stop,) = fx.commands
    assert stop.device_id == gone
    assert stop.stop_agent.agent_id == start.start_agent.agent_id
    assert record.tasks["a"].status == G.TASK_STATUS_RETRY
    assert not advance(record, now_fleet, Counter(), T0 + 6, CFG, "hub").commands  # backoff: 2 s
    (again,) = advance(record, now_fleet, Counter(), T0 + 7.1, CFG, "hub").commands
    assert again.device_id == other
    assert again.start_agent.agent_id.endswith("-a-2")
    # a late result of the first attempt (the device came back) changes nothing
    late = finish(record, "a")
    late.agent_id = start.start_agent.agent_id
    apply_result(record, "a", late, gone, T0 + 8, CFG)
    assert record.tasks["a"].status == G.TASK_STATUS_DISPATCHED


def test_retries_spent_fail_the_goal_with_the_reason() -> None:
    fleet = devices("dev-a")
    record = goal([t("a")], fleet)
    now = T0
    for _ in range(2):  # the first attempt and its one retry
        advance(record, fleet, Counter(), now, CFG, "hub")
        apply_result(record, "a", finish(record, "a", S.AGENT_STATUS_FAILED), "dev-a", now, CFG)
        now += 10
    assert record.status == G.GOAL_STATUS_FAILED
    assert "task a failed after 2 attempts" in record.error


def test_a_task_needing_a_guarded_tool_waits_for_approval() -> None:
    fleet = devices("dev-a")
    record = goal([t("a", tools=["run_command"]), t("b")], fleet, approve_tools=("run_command",))
    fx = advance(record, fleet, Counter(), T0, CFG, "hub")
    assert [c.start_agent.task_id.split("/")[1] for c in fx.commands] == ["b"]
    assert record.tasks["a"].status == G.TASK_STATUS_APPROVAL
    assert "held for approval: it needs run_command" in record.audit[-1].what
    record.tasks["a"].approval.CopyFrom(G.TaskApproval(approve=True, by="op"))
    record.tasks["a"].status = G.TASK_STATUS_WAITING
    assert len(advance(record, fleet, Counter(), T0 + 1, CFG, "hub").commands) == 1


def test_a_spent_wall_time_budget_fails_the_goal_and_stops_what_runs() -> None:
    fleet = devices("dev-a")
    record = goal([t("a")], fleet)
    record.budget.CopyFrom(G.GoalBudget(max_wall_seconds=60))
    advance(record, fleet, Counter(), T0, CFG, "hub")
    fx = advance(record, fleet, Counter(), T0 + 61, CFG, "hub")
    assert record.status == G.GOAL_STATUS_FAILED
    assert "wall-time budget spent: 61s of 60" in record.error
    assert [c.WhichOneof("body") for c in fx.commands] == ["stop_agent"]


def test_task_budgets_come_from_the_goal_and_the_hub() -> None:
    fleet = devices("dev-a")
    record = goal([t("a")], fleet)
    record.budget.CopyFrom(G.GoalBudget(max_tokens=5000))
    record.usage.tokens = 1000
    (start,) = advance(record, fleet, Counter(), T0, CFG, "hub").commands
    assert start.start_agent.budget.max_tokens == 4000  # what the goal has left (< task_tokens)
    assert start.start_agent.budget.max_tool_calls == CFG.task_tool_calls
    assert start.command_id == f"{start.start_agent.agent_id}-start"  # fixed: a resend deduplicates


def test_busy_counts_dispatches_whose_agents_have_not_stepped() -> None:
    fleet = devices("dev-a", "dev-b")
    record = goal([t("a"), t("b")], fleet)
    advance(record, fleet, Counter(), T0, CFG, "hub")
    assert sum(busy_of([record]).values()) == 2
    record.tasks["a"].status = G.TASK_STATUS_RUNNING
    assert sum(busy_of([record]).values()) == 1


def test_inputs_are_cut_and_sinks_are_joined() -> None:
    fleet = devices("dev-a")
    record = goal([t("a"), t("b"), t("c", ["a"])], fleet)
    record.tasks["a"].answer = "x" * 5000
    text = task_text(record, record.revisions[-1].tasks[2])
    assert "x" * 2000 in text
    assert "x" * 2001 not in text
    record.tasks["b"].answer = "B"
    record.tasks["c"].answer = "C"
    assert synthesis(record) == "b: B\nc: C"


def test_several_last_tasks_wait_for_the_planners_synthesis_which_a_cancel_overrides() -> None:
    fleet = devices("dev-a", "dev-b")
    record = goal([t("a"), t("b")], fleet)
    advance(record, fleet, Counter(), T0, CFG, "hub")
    apply_result(record, "a", finish(record, "a"), "dev-a", T0 + 1, CFG)
    apply_result(record, "b", finish(record, "b"), "dev-b", T0 + 2, CFG)
    fx = advance(record, fleet, Counter(), T0 + 2, CFG, "hub")
    assert (record.status, fx.synthesise, fx.ended) == (G.GOAL_STATUS_SYNTHESISING, True, False)
    assert not advance(record, fleet, Counter(), T0 + 3, CFG, "hub").synthesise  # asked once
    cancelled = G.Goal()
    cancelled.CopyFrom(record)
    end_goal(cancelled, G.GOAL_STATUS_CANCELLED, "op changed their mind", T0 + 3, "hub", fx)
    assert not finish_synthesis(cancelled, "late", 10, "", T0 + 4).ended  # the cancel stands
    assert cancelled.status == G.GOAL_STATUS_CANCELLED
    fx = finish_synthesis(record, "a and b", 10, "", T0 + 4)
    assert fx.ended
    assert (record.status, record.answer, record.answer_by) == (
        G.GOAL_STATUS_DONE,
        "a and b",
        G.ANSWER_BY_PLANNER,
    )
    assert record.usage.planner_tokens == 10


def test_one_last_task_or_synthesis_off_ends_the_goal_at_once() -> None:
    fleet = devices("dev-a")
    for tasks, cfg, answer in (
        ([t("a"), t("b", ["a"])], CFG, "b"),
        ([t("a"), t("b")], CFG.model_copy(update={"synthesise": False}), "a: a\nb: b"),
    ):
        record = goal(tasks, fleet)
        for tid in ("a", "b"):
            advance(record, fleet, Counter(), T0, cfg, "hub")
            apply_result(record, tid, finish(record, tid), "dev-a", T0 + 1, cfg)
        fx = advance(record, fleet, Counter(), T0 + 2, cfg, "hub")
        assert (record.status, record.answer, fx.ended, fx.synthesise) == (
            G.GOAL_STATUS_DONE,
            answer,
            True,
            False,
        )


def test_a_task_whose_agent_migrated_follows_it_instead_of_being_reassigned() -> None:
    fleet = devices("dev-a", "dev-b")
    record = goal([t("a")], fleet)
    (start,) = advance(record, fleet, Counter(), T0, CFG, "hub").commands
    agent, source = start.start_agent.agent_id, start.device_id
    target = "dev-b" if source == "dev-a" else "dev-a"
    after = [
        DeviceView(device_id=source, online=False),
        DeviceView(device_id=target, online=True, agents=frozenset({agent}), tools=frozenset({"finish"})),
    ]
    assert advance(record, after, Counter(), T0 + 5, CFG, "hub").commands == []
    state = record.tasks["a"]
    assert (state.device, state.status, state.attempt) == (target, G.TASK_STATUS_RUNNING, 1)
    assert "runs on" in record.audit[-1].what


def test_a_device_reporting_absurd_usage_cannot_break_the_goals_accounting() -> None:
    """Usage is the device's word: a result claiming 2**64-1 tokens and 2**32-1 tool calls is bounded,
    so the goal's totals do not overflow and the next result (another device's) still applies."""
    fleet = devices("dev-a", "dev-b")
    record = goal([t("a"), t("b"), t("c", ["a", "b"])], fleet)
    fx = advance(record, fleet, Counter(), T0, CFG, "hub")
    starts = {c.start_agent.task_id.split("/")[1]: c.device_id for c in fx.commands}
    for tid in ("a", "b"):
        forged = finish(record, tid, tokens=2**64 - 1)
        forged.usage.evaluated_tokens = 2**64 - 1
        forged.usage.tool_calls = forged.usage.steps = 2**32 - 1
        apply_result(record, tid, forged, starts[tid], T0 + 1, CFG)
    assert record.tasks["a"].status == G.TASK_STATUS_DONE
    assert record.tasks["b"].status == G.TASK_STATUS_DONE
    assert record.usage.tool_calls <= 2 * 10**6
    record.SerializeToString()  # still a valid record


def test_a_task_agent_is_granted_exactly_its_planned_tools() -> None:
    """The plan's per-task tools travel with the StartAgent: a least-privilege grant on the edge, and
    a task that needs no tool (a join) is granted none, so it answers from its inputs."""
    fleet = devices("dev-a")
    record = goal([t("a", tools=["run_command"]), t("b", ["a"])], fleet)
    (start,) = advance(record, fleet, Counter(), T0, CFG, "hub").commands
    assert start.start_agent.HasField("tools")
    assert list(start.start_agent.tools.names) == ["run_command"]
    apply_result(record, "a", finish(record, "a"), start.device_id, T0 + 1, CFG)
    (join,) = advance(record, fleet, Counter(), T0 + 1, CFG, "hub").commands
    assert join.start_agent.HasField("tools")
    assert list(join.start_agent.tools.names) == []
