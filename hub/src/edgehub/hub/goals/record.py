"""A goal's record (``edgehub.v1.Goal``, protocol/proto/edgehub/v1/goals.proto): how one is made, how a
plan is adopted into it, and what is read from it. Pure functions, no I/O.

A goal is one record: every plan revision, and per task its status, device, attempts, timings, usage
and answer; the audit trail of approvals and decisions; the goal's usage per device. The statuses
(``TaskStatus``, ``GoalStatus``) are documented in the proto; the sets below group them as the
scheduler (``schedule.py``) reads them.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, TypeAlias

from edgehub.protocol.ids import ID_MAX
from edgehub.protocol.tasks import INPUTS_HEADER
from edgehub.protocol.v1 import goals_pb2, scope_pb2

from .draft import MAX_ID
from .validate import Limits, Plan, PlannedTask

if TYPE_CHECKING:  # the CLI renders records: importing the hub's config from it would be a cycle
    from ..config import PlannerConfig
    from .planner import Planned

G = goals_pb2

SCHEMA_VERSION = 3
"""The record's format: 3 is the protobuf ``Goal`` with a scope (a hub of the release before cannot
read it, so it never places a scoped goal's tasks outside its scope), 2 the same without one; 1 was
JSON (read by ``legacy.py``)."""
MAX_INPUT = 2000
"""Characters of one upstream answer handed to a dependant task."""
MAX_AUDIT = 200
MAX_SUMMARY_TEXT = 200

TaskStatus: TypeAlias = goals_pb2.TaskStatus.ValueType
GoalStatus: TypeAlias = goals_pb2.GoalStatus.ValueType
OPEN: frozenset[TaskStatus] = frozenset({G.TASK_STATUS_WAITING, G.TASK_STATUS_APPROVAL, G.TASK_STATUS_RETRY})
"""Not dispatched yet: placed once its needs are done (and an approval given, a retry due)."""
ACTIVE: frozenset[TaskStatus] = frozenset({G.TASK_STATUS_DISPATCHED, G.TASK_STATUS_RUNNING})
"""An agent works on it."""
ENDED: frozenset[TaskStatus] = frozenset(
    {G.TASK_STATUS_DONE, G.TASK_STATUS_FAILED, G.TASK_STATUS_DENIED, G.TASK_STATUS_CANCELLED}
)
GOAL_ENDED: frozenset[GoalStatus] = frozenset(
    {G.GOAL_STATUS_DONE, G.GOAL_STATUS_FAILED, G.GOAL_STATUS_CANCELLED}
)
MODEL_WORK: frozenset[GoalStatus] = frozenset({G.GOAL_STATUS_PLANNING, G.GOAL_STATUS_SYNTHESISING})
"""Goal statuses in which the model, not the scheduler, moves the goal on."""


def goal_word(status: GoalStatus) -> str:
    """``GOAL_STATUS_DONE`` -> ``done``: how the audit trail and the CLI say a goal's status."""
    return G.GoalStatus.Name(status).removeprefix("GOAL_STATUS_").lower()


def task_word(status: TaskStatus) -> str:
    """``TASK_STATUS_APPROVAL`` -> ``approval``."""
    return G.TaskStatus.Name(status).removeprefix("TASK_STATUS_").lower()


def audit(record: G.Goal, what: str, by: str = "hub", now: float | None = None) -> None:
    """Add a line to the goal's audit trail (its last ``MAX_AUDIT`` lines are kept)."""
    record.audit.add(at=now or time.time(), by=by, what=what[:1000])
    if len(record.audit) > MAX_AUDIT:
        del record.audit[: len(record.audit) - MAX_AUDIT]


ATTEMPT_ROOM = len("-") + MAX_ID + len("-") + 2
"""What a goal id grows by in an id made from it (``{goal}-{task}-{attempt}``; attempts < 100)."""
COMMAND_ROOM = len("-start")
"""What an agent id grows by in the id of a command about it (``{agent}-start``, ``{agent}-stop``)."""


def may_split(record: G.Goal, max_goal_depth: int) -> bool:
    """Whether ``record``'s tasks may be sub-goals: within the depth limit, and short enough an id that a
    sub-goal's agent ids (two levels longer) and their commands' ids still fit the id rule (``ID_MAX``)."""
    room = 2 * ATTEMPT_ROOM + COMMAND_ROOM
    return record.depth < max_goal_depth and len(record.goal_id) + room <= ID_MAX


def new_record(
    text: str,
    *,
    by: str,
    planner: G.GoalPlanner.ValueType,
    labels: Mapping[str, str] | None = None,
    budget: G.GoalBudget | None = None,
    approve_tools: Sequence[str] = (),
    plan: G.PlanDraft | None = None,
    parent: G.GoalParent | None = None,
    depth: int = 0,
    goal_id: str = "",
    now: float | None = None,
    scope: scope_pb2.Scope | None = None,
) -> G.Goal:
    """A goal just submitted (status planning); ``scope``: its submitter's (none: the whole fleet)."""
    now = now or time.time()
    record = G.Goal(
        schema_version=SCHEMA_VERSION,
        goal_id=goal_id or f"g-{uuid.uuid4().hex[:12]}",
        text=text,
        status=G.GOAL_STATUS_PLANNING,
        submitted_by=by,
        submitted_at=now,
        updated_at=now,
        labels=dict(labels or {}),
        budget=budget,
        approve_tools=list(approve_tools),
        planner=planner,
        plan=plan,
        parent=parent,
        depth=depth,
        scope=scope,
    )
    record.usage.SetInParent()  # zero usage is still usage: shown as such
    audit(record, f"submitted: {text[:200]}", by, now)
    return record


def planned_task(t: PlannedTask) -> G.PlannedTask:
    """A validated plan's task as the record keeps it."""
    return G.PlannedTask(
        id=t.id,
        goal=t.goal,
        needs=t.needs,
        tools=t.tools,
        estimate_tokens=t.estimate_tokens,
        level=t.level,
        labels=dict(t.labels),
        avoid=dict(t.avoid),
        subgoal=t.subgoal,
    )


def plan_of(tasks: Iterable[G.PlannedTask]) -> Plan:
    """The revision's tasks as the validated ``Plan`` placement works on."""
    return Plan(
        tuple(
            PlannedTask(
                t.id,
                t.goal,
                tuple(t.needs),
                tuple(t.tools),
                t.estimate_tokens,
                t.level,
                MappingProxyType(dict(t.labels)),
                MappingProxyType(dict(t.avoid)),
                t.subgoal,
            )
            for t in tasks
        )
    )


def current_plan(record: G.Goal) -> Sequence[G.PlannedTask]:
    """The tasks of the goal's last plan revision (none before it is planned)."""
    return record.revisions[-1].tasks if record.revisions else ()


def adopt_plan(record: G.Goal, planned: Planned, reason: str, now: float) -> None:
    """Make ``planned`` the goal's current revision; tasks already done keep their results."""
    revision = len(record.revisions) + 1
    tasks = [planned_task(t) for t in planned.plan.tasks]
    record.revisions.add(
        revision=revision,
        at=now,
        reason=reason,
        tasks=tasks,
        repairs=planned.plan.repairs,
        rejected=planned.rejected,
        drafts=planned.drafts,
    )
    for t in tasks:
        if t.id in record.tasks and record.tasks[t.id].status == G.TASK_STATUS_DONE:
            continue
        record.tasks[t.id].CopyFrom(G.TaskState(status=G.TASK_STATUS_WAITING, revision=revision))
    kept = {t.id for t in tasks}
    for tid, state in record.tasks.items():
        if tid not in kept and state.status not in ENDED:
            state.status = G.TASK_STATUS_CANCELLED
    record.usage.planner_tokens += planned.tokens
    record.status = G.GOAL_STATUS_RUNNING
    audit(record, f"plan revision {revision} ({reason}): {len(tasks)} tasks", now=now)


@dataclass(frozen=True)
class Allowance:
    """The goal's budget, resolved against the hub's defaults."""

    tokens: int
    wall_s: float
    tool_calls: int
    retries: int


def limits_of(record: G.Goal, cfg: PlannerConfig) -> Allowance:
    """The goal's budget (a zero field: the hub's default)."""
    b = record.budget
    return Allowance(
        tokens=int(b.max_tokens or cfg.max_tokens_per_goal),
        wall_s=float(b.max_wall_seconds or cfg.max_wall_seconds),
        tool_calls=int(b.max_tool_calls or cfg.max_tool_calls),
        retries=int(b.max_retries or cfg.max_retries),
    )


def plan_limits(record: G.Goal, cfg: PlannerConfig) -> Limits:
    """How big a plan (or re-plan) of the goal may be: the hub's limits, within what the goal has left."""
    budget = limits_of(record, cfg).tokens - record.usage.tokens
    return Limits(
        max_tasks=cfg.max_tasks,
        max_depth=cfg.max_depth,
        budget_tokens=max(1, budget),
        task_tokens=cfg.task_tokens,
    )


def task_text(record: G.Goal, task: G.PlannedTask) -> str:
    """What the task's agent is asked: its goal and its inputs. Not the whole goal: the plan wrote each
    task to stand alone, and a small model given the whole goal too drifts from its part (seen with
    Gemma 3 270M: it ran an example's command instead of its task)."""
    lines = [task.goal]
    inputs = [(n, record.tasks[n].answer if n in record.tasks else "") for n in task.needs]
    if inputs:
        lines.append(INPUTS_HEADER)
        lines += [f"- {n}: {answer[:MAX_INPUT]}" for n, answer in inputs]
    return "\n".join(lines)


def sinks(record: G.Goal) -> list[str]:
    """The tasks of the current plan that no other task needs: their results are the goal's."""
    tasks = current_plan(record)
    needed = {n for t in tasks for n in t.needs}
    return [t.id for t in tasks if t.id not in needed]


def synthesis(record: G.Goal) -> str:
    """The goal's answer without the model: the sinks' results (a plan that ends in one joining task
    has that task's answer as the goal's), one per line after its task's id when there are several."""
    last = sinks(record)
    if len(last) == 1:
        return record.tasks[last[0]].answer
    return "\n".join(f"{s}: {record.tasks[s].answer}" for s in last)


def summary(record: G.Goal) -> G.GoalSummary:
    """The record without its bulky parts (``ListGoals``)."""
    counts = Counter(s.status for s in record.tasks.values())
    return G.GoalSummary(
        goal_id=record.goal_id,
        status=record.status,
        text=record.text[:MAX_SUMMARY_TEXT],
        submitted_by=record.submitted_by,
        submitted_at=record.submitted_at,
        finished_at=record.finished_at,
        revision=len(record.revisions),
        tasks=[G.TaskCount(status=s, count=n) for s, n in sorted(counts.items())],
        tokens=record.usage.tokens,
        answer=record.answer,
        error=record.error,
    )
