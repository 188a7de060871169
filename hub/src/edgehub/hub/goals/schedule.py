"""A goal's record and its scheduler, as pure functions (no I/O; ``hub/goals.py`` stores the record
and carries out the effects).

A goal is one JSON record (``schema_version`` 1): every plan revision, and per task its status,
device, attempts, timings, usage and answer; the audit trail of approvals and decisions; the goal's
usage per device. Task statuses::

    waiting     its needs are not all done, or no device can take it yet (``waiting_for`` says why)
    approval    held by policy ([planner] approve_tools, or the goal's) until an operator decides
    retry       an attempt failed or its device went offline; dispatched again after ``not_before``
    dispatched  StartAgent sent to ``device`` (agent ``agent_id``); ``running`` from its first step
    done        its agent finished: ``answer`` is what its dependants take as input
    failed      every attempt failed (the goal re-plans, or fails)
    denied      an operator denied it (the goal fails, saying who and why)
    cancelled   the goal ended before it ran, or a re-plan replaced it

``advance`` is the whole scheduler, a function of the record, the fleet and the clock: it fails the
goal on a spent budget, reassigns tasks whose device went offline, holds tasks for approval, places
ready tasks (``assign``: tools, labels, load, free slots; a retry prefers a device it has not failed
on) and, once every task is done, the answer: the one last task's, or, when the plan ends in several,
the planner model's synthesis of theirs (the goal is ``synthesising`` meanwhile; ``finish_synthesis``).
``apply_result`` takes a task agent's end.
Both return ``Effects`` (commands with fixed ids, sub-goals, a re-plan) to carry out once the record
is stored, so repeating them after a crash is harmless.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from edgehub.protocol.v1 import agent_pb2, commands_pb2, task_pb2
from edgehub.sync.commands import new_command

from ..config import PlannerConfig
from .assign import assign
from .placement import DeviceView
from .planner import Planned
from .validate import Limits, Plan, PlannedTask

S = agent_pb2

SCHEMA_VERSION = 1
MAX_INPUT = 2000
"""Characters of one upstream answer handed to a dependant task."""
MAX_AUDIT = 200
MAX_ANSWER = 8000
"""Characters of a task's answer kept in the goal (the record stays well under NATS's 1 MB)."""
OPEN = frozenset({"waiting", "approval", "retry"})
ACTIVE = frozenset({"dispatched", "running"})
ENDED = frozenset({"done", "failed", "denied", "cancelled"})
GOAL_ENDED = frozenset({"done", "failed", "cancelled"})


# the record ----------------------------------------------------------------------------------------
def task_json(t: PlannedTask) -> dict[str, Any]:
    return {
        "id": t.id,
        "goal": t.goal,
        "needs": list(t.needs),
        "tools": list(t.tools),
        "estimate_tokens": t.estimate_tokens,
        "level": t.level,
        "labels": dict(t.labels),
        "avoid": dict(t.avoid),
        "subgoal": t.subgoal,
    }


def plan_of(tasks: Iterable[dict[str, Any]]) -> Plan:
    return Plan(
        tuple(
            PlannedTask(
                t["id"],
                t["goal"],
                tuple(t["needs"]),
                tuple(t["tools"]),
                int(t["estimate_tokens"]),
                int(t["level"]),
                MappingProxyType(dict(t.get("labels", {}))),
                MappingProxyType(dict(t.get("avoid", {}))),
                bool(t.get("subgoal", False)),
            )
            for t in tasks
        )
    )


def current_plan(record: dict[str, Any]) -> list[dict[str, Any]]:
    return list(record["revisions"][-1]["tasks"]) if record.get("revisions") else []


def audit(record: dict[str, Any], what: str, by: str = "hub", now: float | None = None) -> None:
    trail = record.setdefault("audit", [])
    trail.append({"at": now or time.time(), "by": by, "what": what[:1000]})
    del trail[:-MAX_AUDIT]


def new_record(
    text: str,
    *,
    by: str,
    labels: dict[str, str],
    budget: dict[str, float],
    approve_tools: list[str],
    planner: str,
    parent: dict[str, str] | None = None,
    depth: int = 0,
    goal_id: str = "",
    now: float | None = None,
) -> dict[str, Any]:
    now = now or time.time()
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "goal_id": goal_id or f"g-{uuid.uuid4().hex[:12]}",
        "text": text,
        "status": "planning",
        "submitted_by": by,
        "submitted_at": now,
        "updated_at": now,
        "labels": labels,
        "budget": budget,
        "approve_tools": approve_tools,
        "planner": planner,
        "parent": parent,
        "depth": depth,
        "revisions": [],
        "tasks": {},
        "usage": {"tokens": 0, "tool_calls": 0, "steps": 0, "planner_tokens": 0, "by_device": {}},
        "replans": 0,
        "answer": "",
        "error": "",
    }
    audit(record, f"submitted: {text[:200]}", by, now)
    return record


def adopt_plan(record: dict[str, Any], planned: Planned, reason: str, now: float) -> None:
    """Make ``planned`` the goal's current revision; tasks already done keep their results."""
    tasks = [task_json(t) for t in planned.plan.tasks]
    revision = len(record["revisions"]) + 1
    record["revisions"].append(
        {
            "revision": revision,
            "at": now,
            "reason": reason,
            "tasks": tasks,
            "repairs": list(planned.plan.repairs),
            "rejected": list(planned.rejected),
            "drafts": planned.drafts,
        }
    )
    known = record["tasks"]
    for t in tasks:
        if t["id"] in known and known[t["id"]]["status"] == "done":
            continue
        known[t["id"]] = {"status": "waiting", "attempt": 0, "attempts": [], "revision": revision}
    for tid, state in known.items():
        if tid not in {t["id"] for t in tasks} and state["status"] not in ENDED:
            state["status"] = "cancelled"
    record["usage"]["planner_tokens"] += planned.tokens
    record["status"] = "running"
    audit(record, f"plan revision {revision} ({reason}): {len(tasks)} tasks", now=now)


@dataclass
class Effects:
    """What a transition asks for once its record is stored."""

    commands: list[commands_pb2.Command] = field(default_factory=list)
    subgoals: list[tuple[str, str]] = field(default_factory=list)
    """(task id, text) of tasks that are goals for a sub-planner."""
    replan: str = ""
    """Why the rest of the goal must be planned again (empty: no re-plan)."""
    ended: bool = False
    """The goal reached done, failed or cancelled in this transition."""
    synthesise: bool = False
    """Every task is done and the model is to write the goal's answer from the sinks' results."""

    def then(self, more: Effects) -> Effects:
        """These effects followed by ``more`` (two transitions stored as one write)."""
        self.commands += more.commands
        self.subgoals += more.subgoals
        self.replan = self.replan or more.replan
        self.ended = self.ended or more.ended
        self.synthesise = self.synthesise or more.synthesise
        return self


@dataclass(frozen=True)
class GoalBudget:
    """The goal's budget, resolved against the hub's defaults."""

    tokens: int
    wall_s: float
    tool_calls: int
    retries: int


def limits_of(record: dict[str, Any], cfg: PlannerConfig) -> GoalBudget:
    b = record.get("budget", {})
    return GoalBudget(
        tokens=int(b.get("max_tokens") or cfg.max_tokens_per_goal),
        wall_s=float(b.get("max_wall_seconds") or cfg.max_wall_seconds),
        tool_calls=int(b.get("max_tool_calls") or cfg.max_tool_calls),
        retries=int(b["max_retries"]) if b.get("max_retries") is not None else cfg.max_retries,
    )


def plan_limits(record: dict[str, Any], cfg: PlannerConfig) -> Limits:
    budget = limits_of(record, cfg).tokens - int(record["usage"]["tokens"])
    return Limits(
        max_tasks=cfg.max_tasks,
        max_depth=cfg.max_depth,
        budget_tokens=max(1, budget),
        task_tokens=cfg.task_tokens,
    )


def _stop(device: str, agent_id: str, reason: str, issued_by: str) -> commands_pb2.Command:
    cmd = new_command(device, issued_by)
    cmd.command_id = f"{agent_id}-stop"
    cmd.stop_agent.agent_id = agent_id
    cmd.stop_agent.reason = reason
    return cmd


def end_goal(
    record: dict[str, Any], status: str, why: str, now: float, issued_by: str, fx: Effects, by: str = "hub"
) -> None:
    """The goal ends (failed or cancelled): running tasks are stopped, open ones cancelled."""
    record.update(status=status, error=why[:2000], finished_at=now)
    for state in record["tasks"].values():
        if state["status"] in ACTIVE and state.get("agent_id") and state.get("device"):
            fx.commands.append(
                _stop(state["device"], state["agent_id"], f"goal {status}: {why}"[:500], issued_by)
            )
        if state["status"] not in ENDED:
            state["status"] = "cancelled"
    audit(record, f"{status}: {why}", by, now)
    fx.ended = True


def needs_approval(task: dict[str, Any], record: dict[str, Any], cfg: PlannerConfig) -> str:
    """The rule that holds ``task`` for approval ('' when none does)."""
    rules = set(cfg.approve_tools) | set(record.get("approve_tools", []))
    if "*" in rules:
        return "every task of this goal needs approval"
    hit = sorted(rules.intersection(task["tools"]))
    return f"it needs {', '.join(hit)}" if hit else ""


def task_text(record: dict[str, Any], task: dict[str, Any]) -> str:
    """What the task's agent is asked: its goal and its inputs. Not the whole goal: the plan wrote each
    task to stand alone, and a small model given the whole goal too drifts from its part (seen with
    Gemma 3 270M: it ran an example's command instead of its task)."""
    lines = [task["goal"]]
    inputs = [(n, record["tasks"][n].get("answer", "")) for n in task["needs"]]
    if inputs:
        lines.append("Results of the tasks this one builds on:")
        lines += [f"- {n}: {answer[:MAX_INPUT]}" for n, answer in inputs]
    return "\n".join(lines)


def sinks(record: dict[str, Any]) -> list[str]:
    """The tasks of the current plan that no other task needs: their results are the goal's."""
    tasks = current_plan(record)
    needed = {n for t in tasks for n in t["needs"]}
    return [t["id"] for t in tasks if t["id"] not in needed]


def synthesis(record: dict[str, Any]) -> str:
    """The goal's answer without the model: the sinks' results (a plan that ends in one joining task
    has that task's answer as the goal's), one per line after its task's id when there are several."""
    last = sinks(record)
    if len(last) == 1:
        return str(record["tasks"][last[0]].get("answer", ""))
    return "\n".join(f"{s}: {record['tasks'][s].get('answer', '')}" for s in last)


def finish_synthesis(record: dict[str, Any], answer: str, tokens: int, error: str, now: float) -> Effects:
    """The planner's synthesis is back: the goal is done with ``answer``, or, when the model failed
    (``error``), with the sinks' results joined and the reason kept. Nothing when the goal is no longer
    synthesising (cancelled meanwhile, or another hub process finished it)."""
    fx = Effects()
    if record["status"] != "synthesising":
        return fx
    record["usage"]["planner_tokens"] += tokens
    if error:
        record["synthesis_error"] = error[:500]
    record.update(
        status="done",
        answer=synthesis(record) if error else answer,
        answer_by="joined" if error else "planner",
        finished_at=now,
    )
    how = f"the tasks' answers joined ({error[:200]})" if error else "answer synthesised by the planner"
    audit(record, f"done: {how}", now=now)
    fx.ended = True
    return fx


def advance(
    record: dict[str, Any],
    devices: list[DeviceView],
    busy: Counter[str],
    now: float,
    cfg: PlannerConfig,
    issued_by: str,
) -> Effects:
    """One scheduling round of a running goal (see the module docstring); ``busy`` (device -> tasks
    sent but not yet in its twin) is updated with what this round sends."""
    fx = Effects()
    if record["status"] != "running":
        return fx
    lim = limits_of(record, cfg)
    usage = record["usage"]
    spent = [
        (now - float(record["submitted_at"]), lim.wall_s, "wall-time", "s"),
        (int(usage["tokens"]), lim.tokens, "token", " tokens"),
        (int(usage["tool_calls"]), lim.tool_calls, "tool-call", " tool calls"),
    ]
    for used, limit, what, unit in spent:
        if used >= limit:
            end_goal(
                record, "failed", f"{what} budget spent: {used:g}{unit} of {limit:g}", now, issued_by, fx
            )
            return fx
    tasks = {t["id"]: t for t in current_plan(record)}
    states = record["tasks"]
    online = {d.device_id: d for d in devices}
    running_on = {a: d.device_id for d in devices if d.online for a in d.agents}
    for tid, state in states.items():  # a device that went away: its task runs elsewhere
        if state["status"] in ACTIVE and not state.get("subgoal_id"):
            moved = running_on.get(state["agent_id"], state["device"])
            if moved != state["device"]:  # the task's agent was migrated: follow it
                audit(record, f"task {tid}: its agent runs on {moved} now (was {state['device']})", now=now)
                state["device"] = moved
            d = online.get(state["device"])
            if state["status"] == "dispatched" and d is not None and state["agent_id"] in d.agents:
                state.update(status="running", started_at=now)  # the first step's event refines it
            if d is None or not d.online:
                fx.commands.append(
                    _stop(
                        state["device"], state["agent_id"], "reassigned: the device went offline", issued_by
                    )
                )
                _attempt_failed(record, tid, f"device {state['device']} went offline", now, cfg, fx)
    done = {tid for tid, s in states.items() if s["status"] == "done"}
    ready = []
    for tid, task in tasks.items():
        state = states[tid]
        if state["status"] not in OPEN or not all(n in done for n in task["needs"]):
            continue
        if state["status"] == "retry" and now < float(state.get("not_before", 0)):
            continue
        rule = needs_approval(task, record, cfg)
        if rule and not state.get("approval"):
            if state["status"] != "approval":
                state["status"] = "approval"
                state["held_at"] = now
                audit(record, f"task {tid} held for approval: {rule}", now=now)
            continue
        if task.get("subgoal"):
            if record["depth"] >= cfg.max_goal_depth:  # planning refuses these: a plan from before a
                why = f"task {tid} is a sub-goal beyond the depth limit {cfg.max_goal_depth}"  # change
                end_goal(record, "failed", why, now, issued_by, fx)
                return fx
            attempt = int(state["attempt"]) + 1
            child = f"{record['goal_id']}-{tid}-{attempt}"
            state.update(
                status="dispatched", dispatched_at=now, attempt=attempt, agent_id=child, subgoal_id=child,
                device="hub",
            )  # fmt: skip
            state.pop("waiting_for", None)
            fx.subgoals.append((tid, task_text(record, task)))
            continue
        ready.append(tid)
    if ready:
        plan = plan_of(tasks.values())
        avoid = {tid: {a["device"] for a in states[tid]["attempts"]} for tid in ready}
        fresh = [tid for tid in ready if not avoid[tid]]
        placement = dict(assign(plan, fresh, devices, busy=busy).placed) if fresh else {}
        busy.update(placement.values())
        for tid in [t for t in ready if avoid[t]]:  # a retry prefers a device it has not failed on
            elsewhere = [d for d in devices if d.device_id not in avoid[tid]]
            got = (
                assign(plan, [tid], elsewhere, busy=busy).placed
                or assign(plan, [tid], devices, busy=busy).placed
            )
            placement.update(got)
            busy.update(got.values())
        unplaced = assign(plan, [t for t in ready if t not in placement], devices, busy=busy).unplaced
        for u in unplaced:
            states[u.task_id]["waiting_for"] = u.reason
        for tid, device in placement.items():
            cmd = _dispatch(record, tasks[tid], device, lim, now, cfg, issued_by)
            if cmd is None:
                end_goal(record, "failed", "the goal's budget is spent", now, issued_by, fx)
                return fx
            fx.commands.append(cmd)
    if tasks and all(states[t]["status"] == "done" for t in tasks):
        several = len(sinks(record)) > 1
        if several and cfg.enabled and cfg.synthesise:
            record["status"] = "synthesising"  # GoalService asks the model (finish_synthesis)
            audit(record, "every task done: the planner writes the answer", now=now)
            fx.synthesise = True
            return fx
        by = "joined" if several else "task"
        record.update(status="done", answer=synthesis(record), answer_by=by, finished_at=now)
        audit(record, "done", now=now)
        fx.ended = True
    return fx


def _dispatch(
    record: dict[str, Any],
    task: dict[str, Any],
    device: str,
    lim: GoalBudget,
    now: float,
    cfg: PlannerConfig,
    issued_by: str,
) -> commands_pb2.Command | None:
    state = record["tasks"][task["id"]]
    usage = record["usage"]
    tokens = lim.tokens - int(usage["tokens"])
    calls = lim.tool_calls - int(usage["tool_calls"])
    wall = lim.wall_s - (now - float(record["submitted_at"]))
    if tokens <= 0 or calls <= 0 or wall <= 0:
        return None
    attempt = int(state["attempt"]) + 1
    agent_id = f"{record['goal_id']}-{task['id']}-{attempt}"
    state.update(status="dispatched", attempt=attempt, agent_id=agent_id, device=device, dispatched_at=now)
    for key in ("waiting_for", "started_at", "finished_at", "error"):
        state.pop(key, None)
    cmd = new_command(device, issued_by)
    cmd.command_id = f"{agent_id}-start"  # fixed: a resend after a crash is deduplicated
    start = cmd.start_agent
    start.agent_id = agent_id
    start.task_id = f"{record['goal_id']}/{task['id']}"
    start.goal = task_text(record, task)
    start.budget.max_tokens = min(cfg.task_tokens, tokens)
    start.budget.max_tool_calls = min(cfg.task_tool_calls, calls)
    start.budget.max_wall_seconds = wall
    return cmd


def _attempt_failed(
    record: dict[str, Any], tid: str, why: str, now: float, cfg: PlannerConfig, fx: Effects
) -> None:
    """Record the attempt; retry with backoff, or (attempts spent) re-plan or fail the goal."""
    state = record["tasks"][tid]
    state["attempts"].append(
        {
            "attempt": state["attempt"],
            "agent_id": state.get("agent_id", ""),
            "device": state.get("device", ""),
            "dispatched_at": state.get("dispatched_at", 0),
            "ended_at": now,
            "reason": why[:500],
        }
    )
    lim = limits_of(record, cfg)
    if int(state["attempt"]) <= lim.retries:
        wait = cfg.retry_backoff_s * 2 ** (int(state["attempt"]) - 1)
        state.update(status="retry", not_before=now + wait, error=why[:500])
        audit(record, f"task {tid} attempt {state['attempt']} failed ({why}); retry in {wait:g}s", now=now)
        return
    state.update(status="failed", error=why[:500], finished_at=now)
    if int(record.get("replans", 0)) < cfg.max_replans and record.get("planner") == "model":
        fx.replan = f"task {tid} failed {state['attempt']} times: {why}"
        audit(record, f"task {tid} failed every attempt ({why}); re-planning the rest", now=now)
        return
    end_goal(record, "failed", f"task {tid} failed after {state['attempt']} attempts: {why}", now, "hub", fx)


def apply_result(
    record: dict[str, Any], tid: str, result: task_pb2.TaskResult, device: str, now: float, cfg: PlannerConfig
) -> Effects:
    """A task's agent ended (``TaskResult``). Results of an attempt the goal has moved on from (a
    device that came back after its task was reassigned) are ignored."""
    fx = Effects()
    state = record["tasks"].get(tid)
    if state is None or state.get("agent_id") != result.agent_id or state["status"] not in ACTIVE:
        return fx
    u = result.usage
    tokens = int(u.evaluated_tokens + u.completion_tokens)
    usage = record["usage"]
    usage["tokens"] += tokens
    usage["tool_calls"] += int(u.tool_calls)
    usage["steps"] += int(u.steps)
    per_device = usage["by_device"].setdefault(device, {"tokens": 0, "tool_calls": 0, "tasks": 0})
    per_device["tokens"] += tokens
    per_device["tool_calls"] += int(u.tool_calls)
    per_device["tasks"] += 1
    spent = state.setdefault("usage", {"tokens": 0, "tool_calls": 0, "steps": 0, "wall_seconds": 0.0})
    spent["tokens"] += tokens
    spent["tool_calls"] += int(u.tool_calls)
    spent["steps"] += int(u.steps)
    spent["wall_seconds"] += float(u.wall_seconds)
    state["device"] = device  # a task agent migrated meanwhile reports from its new device
    if record["status"] != "running":
        return fx
    if result.status == S.AGENT_STATUS_FINISHED:
        ended = result.finished_at.ToMilliseconds() / 1000 if result.HasField("finished_at") else now
        state.update(status="done", answer=result.answer[:MAX_ANSWER], finished_at=ended)
        state.pop("error", None)
        audit(record, f"task {tid} done on {device} ({tokens} tokens)", now=now)
        return fx
    why = result.failure_reason or S.AgentStatus.Name(result.status)
    _attempt_failed(record, tid, f"agent {result.agent_id} on {device}: {why}", now, cfg, fx)
    return fx


def busy_of(records: Iterable[dict[str, Any]]) -> Counter[str]:
    """Tasks sent to each device whose agent has not stepped yet (so its twin does not count them)."""
    busy: Counter[str] = Counter()
    for record in records:
        for state in record["tasks"].values():
            if state["status"] == "dispatched" and not state.get("subgoal_id"):
                busy[state["device"]] += 1
    return busy


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """The record without its bulky parts (``ListGoals``)."""
    counts = Counter(s["status"] for s in record["tasks"].values())
    return {
        "goal_id": record["goal_id"],
        "status": record["status"],
        "text": record["text"][:200],
        "tasks": dict(counts),
        "revision": len(record["revisions"]),
        "submitted_at": record["submitted_at"],
        "tokens": record["usage"]["tokens"],
    }
