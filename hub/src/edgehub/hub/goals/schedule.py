"""The goal scheduler, as pure functions of the goal's record (``record.py``), the fleet and the clock
(no I/O: ``GoalService`` stores the record and carries out the effects).

``advance`` is the whole scheduler: it fails the goal on a spent budget, reassigns tasks whose device
went offline, holds tasks for approval, places ready tasks (``assign``: tools, labels, load, free
slots; a retry prefers a device it has not failed on) and, once every task is done, the answer: the
one last task's, or, when the plan ends in several, the planner model's synthesis of theirs (the goal
is ``synthesising`` meanwhile; ``finish_synthesis``). ``apply_result`` takes a task agent's end.
Both return ``Effects`` (commands with fixed ids, sub-goals, a re-plan) to carry out once the record
is stored, so repeating them after a crash is harmless.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from edgehub.protocol.v1 import agent_pb2, commands_pb2, goals_pb2, task_pb2
from edgehub.sync.commands import new_command

from ..config import PlannerConfig
from ..fleet.scopes import Scope
from .assign import assign
from .placement import DeviceView
from .record import (
    ACTIVE,
    ENDED,
    OPEN,
    Allowance,
    GoalStatus,
    audit,
    current_plan,
    goal_word,
    limits_of,
    may_split,
    plan_of,
    sinks,
    synthesis,
    task_text,
)

G = goals_pb2

S = agent_pb2

MAX_ANSWER = 8000
"""Characters of a task's answer kept in the goal (the record stays well under NATS's 1 MB)."""


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


def attempt_id(goal_id: str, task_id: str, revision: int, attempt: int) -> str:
    """The agent (or sub-goal) id of a task's attempt: ``{goal}-{task}-{attempt}``, with ``-R{revision}``
    before the attempt from the second plan revision on (a re-plan may reuse a task id, and its attempts
    count from 1 again; task ids are lower case, so the marker cannot be part of one). Distinct for every
    (task, revision, attempt) of a goal: the hub registers each to its device once
    (``fleet.agents.reserve``)."""
    marker = f"-R{revision}" if revision > 1 else ""
    return f"{goal_id}-{task_id}{marker}-{attempt}"


def _stop(device: str, agent_id: str, reason: str, issued_by: str) -> commands_pb2.Command:
    cmd = new_command(device, issued_by)
    cmd.command_id = f"{agent_id}-stop"
    cmd.stop_agent.agent_id = agent_id
    cmd.stop_agent.reason = reason
    return cmd


def end_goal(
    record: G.Goal, status: GoalStatus, why: str, now: float, issued_by: str, fx: Effects, by: str = "hub"
) -> None:
    """The goal ends (failed or cancelled): running tasks are stopped, open ones cancelled."""
    word = goal_word(status)
    record.status, record.error, record.finished_at = status, why[:2000], now
    for state in record.tasks.values():
        if state.status in ACTIVE and state.agent_id and state.device:
            fx.commands.append(_stop(state.device, state.agent_id, f"goal {word}: {why}"[:500], issued_by))
        if state.status not in ENDED:
            state.status = G.TASK_STATUS_CANCELLED
    audit(record, f"{word}: {why}", by, now)
    fx.ended = True


def needs_approval(task: G.PlannedTask, record: G.Goal, cfg: PlannerConfig) -> str:
    """The rule that holds ``task`` for approval ('' when none does)."""
    rules = set(cfg.approve_tools) | set(record.approve_tools)
    if "*" in rules:
        return "every task of this goal needs approval"
    hit = sorted(rules.intersection(task.tools))
    return f"it needs {', '.join(hit)}" if hit else ""


def finish_synthesis(record: G.Goal, answer: str, tokens: int, error: str, now: float) -> Effects:
    """The planner's synthesis is back: the goal is done with ``answer``, or, when the model failed
    (``error``), with the sinks' results joined and the reason kept. Nothing when the goal is no longer
    synthesising (cancelled meanwhile, or another hub process finished it)."""
    fx = Effects()
    if record.status != G.GOAL_STATUS_SYNTHESISING:
        return fx
    record.usage.planner_tokens += tokens
    if error:
        record.synthesis_error = error[:500]
    record.status = G.GOAL_STATUS_DONE
    record.answer = synthesis(record) if error else answer
    record.answer_by = G.ANSWER_BY_JOINED if error else G.ANSWER_BY_PLANNER
    record.finished_at = now
    how = f"the tasks' answers joined ({error[:200]})" if error else "answer synthesised by the planner"
    audit(record, f"done: {how}", now=now)
    fx.ended = True
    return fx


@dataclass(frozen=True)
class Round:
    """What one scheduling round works with besides the record."""

    devices: Sequence[DeviceView]
    busy: Counter[str]
    """Device -> tasks sent but not yet in its twin; updated with what this round sends."""
    now: float
    cfg: PlannerConfig
    issued_by: str


def advance(
    record: G.Goal,
    devices: Sequence[DeviceView],
    busy: Counter[str],
    now: float,
    cfg: PlannerConfig,
    issued_by: str,
) -> Effects:
    """One scheduling round of a running goal (see the module docstring); ``busy`` (device -> tasks
    sent but not yet in its twin) is updated with what this round sends."""
    fx = Effects()
    if record.status != G.GOAL_STATUS_RUNNING:
        return fx
    r = Round(devices, busy, now, cfg, issued_by)
    lim = limits_of(record, cfg)
    if spent := _budget_spent(record, lim, now):
        end_goal(record, G.GOAL_STATUS_FAILED, spent, now, issued_by, fx)
        return fx
    _follow_devices(record, r, fx)
    ready = _ready(record, r, fx)
    if fx.ended:
        return fx
    if ready:
        _dispatch_ready(record, ready, lim, r, fx)
        if fx.ended:
            return fx
    _finish_if_done(record, cfg, now, fx)
    return fx


def _budget_spent(record: G.Goal, lim: Allowance, now: float) -> str:
    """Why the goal's budget is spent ('' while it is not)."""
    usage = record.usage
    spent = [
        (now - record.submitted_at, lim.wall_s, "wall-time", "s"),
        (usage.tokens, lim.tokens, "token", " tokens"),
        (usage.tool_calls, lim.tool_calls, "tool-call", " tool calls"),
    ]
    for used, limit, what, unit in spent:
        if used >= limit:
            return f"{what} budget spent: {used:g}{unit} of {limit:g}"
    return ""


def _follow_devices(record: G.Goal, r: Round, fx: Effects) -> None:
    """Dispatched tasks against the fleet: an agent that migrated is followed, one seen running is
    running, and one whose device went away is stopped there and its task retried elsewhere."""
    online = {d.device_id: d for d in r.devices}
    running_on = {a: d.device_id for d in r.devices if d.online for a in d.agents}
    for tid, state in record.tasks.items():
        if state.status not in ACTIVE or state.subgoal_id:
            continue
        moved = running_on.get(state.agent_id, state.device)
        if moved != state.device:  # the task's agent was migrated: follow it
            audit(record, f"task {tid}: its agent runs on {moved} now (was {state.device})", now=r.now)
            state.device = moved
        d = online.get(state.device)
        if state.status == G.TASK_STATUS_DISPATCHED and d is not None and state.agent_id in d.agents:
            state.status, state.started_at = G.TASK_STATUS_RUNNING, r.now  # the first step refines it
        if d is None or not d.online:
            why = "reassigned: the device went offline"
            fx.commands.append(_stop(state.device, state.agent_id, why, r.issued_by))
            _attempt_failed(record, tid, f"device {state.device} went offline", r.now, r.cfg, fx)


def _ready(record: G.Goal, r: Round, fx: Effects) -> list[str]:
    """The tasks to place now. Tasks whose needs are done are held for approval where a rule says so,
    and sub-goal tasks are started as goals of their own (the goal fails on one beyond the depth limit:
    planning refuses those, so only a plan from before a config change has one)."""
    done = {tid for tid, s in record.tasks.items() if s.status == G.TASK_STATUS_DONE}
    ready = []
    for task in current_plan(record):
        state = record.tasks[task.id]
        if state.status not in OPEN or not all(n in done for n in task.needs):
            continue
        if state.status == G.TASK_STATUS_RETRY and r.now < state.not_before:
            continue
        if _held(record, task, state, r):
            continue
        if task.subgoal and not may_split(record, r.cfg.max_goal_depth):
            why = f"task {task.id} is a sub-goal beyond the depth limit {r.cfg.max_goal_depth}"
            end_goal(record, G.GOAL_STATUS_FAILED, why, r.now, r.issued_by, fx)
            return []
        if task.subgoal:
            _start_subgoal(record, task, state, r.now, fx)
            continue
        ready.append(task.id)
    return ready


def _held(record: G.Goal, task: G.PlannedTask, state: G.TaskState, r: Round) -> bool:
    """Whether ``task`` waits for an operator's decision (and holds it, the first time)."""
    rule = needs_approval(task, record, r.cfg)
    if not rule or state.HasField("approval"):
        return False
    if state.status != G.TASK_STATUS_APPROVAL:
        state.status, state.held_at = G.TASK_STATUS_APPROVAL, r.now
        audit(record, f"task {task.id} held for approval: {rule}", now=r.now)
    return True


def _start_subgoal(record: G.Goal, task: G.PlannedTask, state: G.TaskState, now: float, fx: Effects) -> None:
    attempt = state.attempt + 1
    child = attempt_id(record.goal_id, task.id, state.revision, attempt)
    state.status, state.dispatched_at, state.attempt = G.TASK_STATUS_DISPATCHED, now, attempt
    state.agent_id, state.subgoal_id, state.device = child, child, "hub"
    state.ClearField("waiting_for")
    fx.subgoals.append((task.id, task_text(record, task)))


def _dispatch_ready(record: G.Goal, ready: list[str], lim: Allowance, r: Round, fx: Effects) -> None:
    """Place the ready tasks and send each its StartAgent; the goal fails when its budget is spent."""
    tasks = {t.id: t for t in current_plan(record)}
    for tid, device in _placement(record, ready, r).items():
        cmd = _start(record, tasks[tid], device, lim, r)
        if cmd is None:
            end_goal(record, G.GOAL_STATUS_FAILED, "the goal's budget is spent", r.now, r.issued_by, fx)
            return
        fx.commands.append(cmd)


def _placement(record: G.Goal, ready: list[str], r: Round) -> dict[str, str]:
    """A device for each ready task that one can take (a retry prefers a device it has not failed on);
    the others say why they wait (``waiting_for``). ``r.busy`` counts what is placed."""
    plan = plan_of(current_plan(record))
    devices, busy = r.devices, r.busy
    avoid = {tid: {a.device for a in record.tasks[tid].attempts} for tid in ready}
    fresh = [tid for tid in ready if not avoid[tid]]
    placement = dict(assign(plan, fresh, devices, busy=busy).placed) if fresh else {}
    busy.update(placement.values())
    for tid in [t for t in ready if avoid[t]]:
        elsewhere = [d for d in devices if d.device_id not in avoid[tid]]
        got = (
            assign(plan, [tid], elsewhere, busy=busy).placed or assign(plan, [tid], devices, busy=busy).placed
        )
        placement.update(got)
        busy.update(got.values())
    unplaced = assign(plan, [t for t in ready if t not in placement], devices, busy=busy).unplaced
    for u in unplaced:
        record.tasks[u.task_id].waiting_for = u.reason
    return placement


def _start(
    record: G.Goal, task: G.PlannedTask, device: str, lim: Allowance, r: Round
) -> commands_pb2.Command | None:
    """The task's next attempt on ``device`` (None: the goal has nothing left to give it)."""
    usage = record.usage
    tokens = lim.tokens - usage.tokens
    calls = lim.tool_calls - usage.tool_calls
    wall = lim.wall_s - (r.now - record.submitted_at)
    if tokens <= 0 or calls <= 0 or wall <= 0:
        return None
    state = record.tasks[task.id]
    attempt = state.attempt + 1
    agent_id = attempt_id(record.goal_id, task.id, state.revision, attempt)
    state.status, state.attempt, state.agent_id = G.TASK_STATUS_DISPATCHED, attempt, agent_id
    state.device, state.dispatched_at = device, r.now
    for name in ("waiting_for", "started_at", "finished_at", "error"):
        state.ClearField(name)
    cmd = new_command(device, r.issued_by)
    cmd.command_id = f"{agent_id}-start"  # fixed: a resend after a crash is deduplicated
    start = cmd.start_agent
    start.agent_id = agent_id
    start.task_id = f"{record.goal_id}/{task.id}"
    start.goal = task_text(record, task)
    start.tools.names.extend(task.tools)  # set even when empty: a task that needs no tool gets none
    start.budget.max_tokens = min(r.cfg.task_tokens, tokens)
    start.budget.max_tool_calls = min(r.cfg.task_tool_calls, calls)
    start.budget.max_wall_seconds = wall
    return cmd


def _finish_if_done(record: G.Goal, cfg: PlannerConfig, now: float, fx: Effects) -> None:
    """Every task done: the goal's answer (asked of the model when the plan ends in several tasks)."""
    tasks = current_plan(record)
    if not tasks or any(record.tasks[t.id].status != G.TASK_STATUS_DONE for t in tasks):
        return
    several = len(sinks(record)) > 1
    if several and cfg.enabled and cfg.synthesise:
        record.status = G.GOAL_STATUS_SYNTHESISING  # GoalService asks the model (finish_synthesis)
        audit(record, "every task done: the planner writes the answer", now=now)
        fx.synthesise = True
        return
    record.status, record.answer, record.finished_at = G.GOAL_STATUS_DONE, synthesis(record), now
    record.answer_by = G.ANSWER_BY_JOINED if several else G.ANSWER_BY_TASK
    audit(record, "done", now=now)
    fx.ended = True


def _attempt_failed(record: G.Goal, tid: str, why: str, now: float, cfg: PlannerConfig, fx: Effects) -> None:
    """Record the attempt; retry with backoff, or (attempts spent) re-plan or fail the goal."""
    state = record.tasks[tid]
    state.attempts.add(
        attempt=state.attempt,
        agent_id=state.agent_id,
        device=state.device,
        dispatched_at=state.dispatched_at,
        ended_at=now,
        reason=why[:500],
    )
    if state.attempt <= limits_of(record, cfg).retries:
        wait = cfg.retry_backoff_s * 2 ** (state.attempt - 1)
        state.status, state.not_before, state.error = G.TASK_STATUS_RETRY, now + wait, why[:500]
        audit(record, f"task {tid} attempt {state.attempt} failed ({why}); retry in {wait:g}s", now=now)
        return
    state.status, state.error, state.finished_at = G.TASK_STATUS_FAILED, why[:500], now
    if record.replans < cfg.max_replans and record.planner == G.GOAL_PLANNER_MODEL:
        fx.replan = f"task {tid} failed {state.attempt} times: {why}"
        audit(record, f"task {tid} failed every attempt ({why}); re-planning the rest", now=now)
        return
    why = f"task {tid} failed after {state.attempt} attempts: {why}"
    end_goal(record, G.GOAL_STATUS_FAILED, why, now, "hub", fx)


def apply_result(
    record: G.Goal, tid: str, result: task_pb2.TaskResult, device: str, now: float, cfg: PlannerConfig
) -> Effects:
    """A task's agent ended (``TaskResult``). Results of an attempt the goal has moved on from (a
    device that came back after its task was reassigned) are ignored."""
    fx = Effects()
    state = record.tasks.get(tid)
    if state is None or state.agent_id != result.agent_id or state.status not in ACTIVE:
        return fx
    tokens = _count_usage(record, state, result.usage, device)
    state.device = device  # a task agent migrated meanwhile reports from its new device
    if record.status != G.GOAL_STATUS_RUNNING:
        return fx
    if result.status == S.AGENT_STATUS_FINISHED:
        ended = result.finished_at.ToMilliseconds() / 1000 if result.HasField("finished_at") else now
        state.status, state.answer, state.finished_at = G.TASK_STATUS_DONE, result.answer[:MAX_ANSWER], ended
        state.ClearField("error")
        audit(record, f"task {tid} done on {device} ({tokens} tokens)", now=now)
        return fx
    why = result.failure_reason or S.AgentStatus.Name(result.status)
    _attempt_failed(record, tid, f"agent {result.agent_id} on {device}: {why}", now, cfg, fx)
    return fx


MAX_REPORTED_TOKENS = 10**9
"""Tokens one task result may report (evaluated and completion, each): usage is the device's word."""
MAX_REPORTED_COUNT = 10**6
"""Steps and tool calls one task result may report."""


def _count_usage(record: G.Goal, state: G.TaskState, u: agent_pb2.Usage, device: str) -> int:
    """Add an attempt's usage to the goal's, the device's and the task's; the tokens it spent. What a
    device reports is bounded first: a huge count would overflow the goal's totals and make every later
    result for the goal fail to apply, another device's too."""
    u = agent_pb2.Usage(
        evaluated_tokens=min(u.evaluated_tokens, MAX_REPORTED_TOKENS),
        completion_tokens=min(u.completion_tokens, MAX_REPORTED_TOKENS),
        tool_calls=min(u.tool_calls, MAX_REPORTED_COUNT),
        steps=min(u.steps, MAX_REPORTED_COUNT),
    )
    tokens = u.evaluated_tokens + u.completion_tokens
    usage = record.usage
    usage.tokens += tokens
    usage.tool_calls += u.tool_calls
    usage.steps += u.steps
    per_device = usage.by_device[device]
    per_device.tokens += tokens
    per_device.tool_calls += u.tool_calls
    per_device.tasks += 1
    spent = state.usage
    spent.tokens += tokens
    spent.tool_calls += u.tool_calls
    spent.steps += u.steps
    spent.wall_seconds += u.wall_seconds
    return tokens


def busy_of(records: Iterable[G.Goal]) -> Counter[str]:
    """Tasks sent to each device whose agent has not stepped yet (so its twin does not count them)."""
    busy: Counter[str] = Counter()
    for record in records:
        for state in record.tasks.values():
            if state.status == G.TASK_STATUS_DISPATCHED and not state.subgoal_id:
                busy[state.device] += 1
    return busy


def selected(devices: Sequence[DeviceView], labels: Mapping[str, str]) -> list[DeviceView]:
    """The devices a goal's selector allows (all, without one: the common case costs nothing)."""
    return [d for d in devices if d.matches(labels, {})] if labels else list(devices)


def goal_devices(devices: Sequence[DeviceView], record: G.Goal) -> list[DeviceView]:
    """The devices a goal may use: those its selector allows (the labels devices report) that are in
    its scope (the labels the hub assigned them: a device cannot put itself in a scope)."""
    mine = selected(devices, record.labels)
    scope = Scope.from_proto(record.scope)
    if scope.fleet_wide:
        return mine
    return [d for d in mine if scope.covers(d.device_id, d.hub_labels)]
