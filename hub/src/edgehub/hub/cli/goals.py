"""``edgehub goal ...``: goals planned by the hub into task DAGs and run across the fleet (through the
hub's management API; credentials as for ``edgehub agents``)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from google.protobuf import json_format
from rich.console import Console
from rich.table import Table

from edgehub.cli.common import ExitCode, JsonOpt, exit_with, fail
from edgehub.protocol.v1 import goals_pb2

from ..goals.record import GOAL_ENDED, current_plan, goal_word, task_word
from .api import DEFAULT_API, ApiOpt, as_json_line, call
from .areas import GOAL

console = Console()
if not console.is_terminal:  # piped or logged: the DAG's table needs more than rich's default 80 columns
    console = Console(width=160)

goal_app = typer.Typer(
    help=GOAL.help,
    no_args_is_help=True,
)

G = goals_pb2
BAR = 24
"""Characters of the timeline column."""
COLOURS = {
    "done": "green",
    "running": "cyan",
    "dispatched": "cyan",
    "failed": "red",
    "denied": "red",
    "approval": "yellow",
    "retry": "yellow",
    "cancelled": "dim",
    "planning": "yellow",
    "synthesising": "yellow",
}
ANSWER_BY = {
    G.ANSWER_BY_PLANNER: "synthesised by the planner",
    G.ANSWER_BY_TASK: "the last task's",
    G.ANSWER_BY_JOINED: "the last tasks' answers joined",
}


def _labels(spec: str) -> dict[str, str]:
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key or not value:
            fail(f"--devices: {part!r} is not KEY=VALUE (e.g. --devices site=hall-5,profile=x86-ipc)")
        out[key] = value
    return out


def _plan(path: Path) -> G.PlanDraft:
    """The plan in the file at ``path``: JSON in the planner's draft format (``PlanDraft``)."""
    try:
        text = path.read_bytes().decode()
    except OSError as exc:
        fail(f"cannot read the plan {path}: {exc.strerror}")
    except UnicodeDecodeError as exc:
        fail(f"the plan {path} is not UTF-8 text ({exc.reason} at byte {exc.start})")
    try:
        return json_format.ParseDict(json.loads(text), G.PlanDraft())
    except ValueError as exc:  # JSONDecodeError
        fail(f"the plan {path} is not valid JSON: {exc}")
    except json_format.ParseError as exc:
        fail(f"the plan {path} is not in the planner's draft format: {exc}")


def _coloured(word: str) -> str:
    return f"[{COLOURS.get(word, 'white')}]{word}[/]"


def _bar(start: float, end: float, t0: float, span: float) -> str:
    if not start:
        return ""
    a = int(BAR * (start - t0) / span)
    b = max(a + 1, int(BAR * (end - t0) / span))
    return " " * a + "█" * (min(b, BAR) - a)


def show(goal: G.Goal) -> None:
    """The goal's DAG, level by level: each task's status, device, attempts, timings and tokens, and a
    timeline where tasks that ran in parallel overlap; then its usage, revisions and answer."""
    console.print(
        f"goal [bold]{goal.goal_id}[/] {_coloured(goal_word(goal.status))}, plan revision "
        f"{len(goal.revisions)}, by {goal.submitted_by or '?'}: {goal.text[:200]}"
    )
    console.print(_dag(goal, time.time()))
    for t in current_plan(goal):
        s = goal.tasks.get(t.id, G.TaskState())
        if why := s.waiting_for or (s.error if s.status != G.TASK_STATUS_DONE else ""):
            console.print(f"  {t.id}: [yellow]{why}[/]")
    _outcome(goal)


def _dag(goal: G.Goal, now: float) -> Table:
    t0 = goal.submitted_at
    ends = [s.finished_at or now for s in goal.tasks.values() if s.dispatched_at]
    span = max([*ends, t0 + 1e-3]) - t0
    table = Table("level", "task", "needs", "status", "device", "try", "start", "took", "tokens", "timeline")
    for t in current_plan(goal):
        s = goal.tasks.get(t.id, G.TaskState())
        status = task_word(s.status) if s.status else "?"
        start = s.started_at or s.dispatched_at
        end = s.finished_at or (now if start else 0)
        table.add_row(
            str(t.level),
            t.id + (" (sub-goal)" if t.subgoal else ""),
            ", ".join(t.needs) or "-",
            _coloured(status),
            s.device or "-",
            str(s.attempt),
            f"+{start - t0:.1f}s" if start else "-",
            f"{end - start:.1f}s" if start else "-",
            f"{s.usage.tokens:,}",
            f"[{COLOURS.get(status, 'white')}]{_bar(start, end, t0, span)}[/]",
        )
    return table


def _outcome(goal: G.Goal) -> None:
    """Usage, what the planner repaired or refused, the error and the answer."""
    u = goal.usage
    per_device = ", ".join(f"{d} {v.tokens:,}" for d, v in sorted(u.by_device.items()))
    console.print(
        f"usage: {u.tokens:,} tokens ({per_device or 'no device yet'}), "
        f"{u.tool_calls} tool calls, planner {u.planner_tokens:,} tokens"
    )
    for rev in goal.revisions:
        for repair in rev.repairs:
            console.print(f"  revision {rev.revision} repaired: {repair}")
        for reason in rev.rejected:
            console.print(f"  revision {rev.revision}: a draft was rejected: {reason}")
    if goal.error:
        console.print(f"[red]error:[/] {goal.error}")
    if goal.answer:
        how = ANSWER_BY.get(goal.answer_by, "")
        console.print(f"[bold]answer{f' ({how})' if how else ''}:[/] {goal.answer}")
    if goal.synthesis_error:
        console.print(f"  [yellow]the planner could not synthesise the answer: {goal.synthesis_error}[/]")


def _wait(goal: G.Goal, api: str, seconds: float) -> G.Goal:
    deadline = time.monotonic() + seconds
    req = G.GetGoalRequest(goal_id=goal.goal_id)
    while goal.status not in GOAL_ENDED and time.monotonic() < deadline:
        time.sleep(0.5)
        goal = call(api, lambda s: s.GetGoal(req, timeout=10))
    return goal


def _out(goal: G.Goal, as_json: bool) -> None:
    if as_json:
        print(as_json_line(goal))
    else:
        show(goal)
    if goal.status in (G.GOAL_STATUS_FAILED, G.GOAL_STATUS_CANCELLED):
        exit_with(ExitCode.FAILED)


@goal_app.command("submit")
def goal_submit(
    text: Annotated[str, typer.Argument(help="The goal, in words.")],
    devices: Annotated[
        str, typer.Option("--devices", help="Only devices with these labels: KEY=VALUE[,KEY=VALUE].")
    ] = "",
    budget_tokens: Annotated[int, typer.Option(help="Tokens for the whole goal (0: the hub's default).")] = 0,
    budget_seconds: Annotated[float, typer.Option(help="Wall time for the goal (0: the hub's default).")] = 0,
    budget_tool_calls: Annotated[int, typer.Option(help="Tool calls for the goal (0: default).")] = 0,
    retries: Annotated[int, typer.Option(help="Attempts of a task after its first (0: default).")] = 0,
    plan: Annotated[
        Path | None, typer.Option(help="Your own plan (the planner's JSON draft format), not the model's.")
    ] = None,
    approve_tool: Annotated[
        list[str] | None,
        typer.Option("--approve-tool", help="Tasks needing this tool wait for approval ('*': every task)."),
    ] = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for the goal to end (0: once planned).")] = 0,
    api: ApiOpt = DEFAULT_API,
    as_json: JsonOpt = False,
) -> None:
    """Plan a goal into tasks with the hub's model (or your --plan) and run it across the fleet.

    Exit code 1 when planning fails (the reasons are shown), or the goal fails within --wait; 2 for bad
    input (an empty goal, one over the hub's 4,000 characters, an unreadable plan)."""
    if not text.strip():
        fail("the goal is empty" if not text else "the goal is only whitespace")
    req = G.SubmitGoalRequest(
        text=text,
        labels=_labels(devices),
        budget=G.GoalBudget(
            max_tokens=budget_tokens,
            max_wall_seconds=budget_seconds,
            max_tool_calls=budget_tool_calls,
            max_retries=retries,
        ),
        plan=_plan(plan) if plan is not None else None,
        approve_tools=approve_tool or [],
    )
    goal = call(api, lambda s: s.SubmitGoal(req, timeout=900))
    _out(_wait(goal, api, wait), as_json)


@goal_app.command("show")
def goal_show(
    goal_id: str,
    wait: Annotated[float, typer.Option(help="Seconds to wait for the goal to end first.")] = 0,
    api: ApiOpt = DEFAULT_API,
    as_json: JsonOpt = False,
) -> None:
    """The goal's DAG with each task's status, device and timings; its usage and answer."""
    goal = call(api, lambda s: s.GetGoal(G.GetGoalRequest(goal_id=goal_id), timeout=10))
    _out(_wait(goal, api, wait), as_json)


@goal_app.command("list")
def goal_list(api: ApiOpt = DEFAULT_API, as_json: JsonOpt = False) -> None:
    """Every goal the hub keeps, oldest first."""
    reply = call(api, lambda s: s.ListGoals(G.ListGoalsRequest(), timeout=10))
    if as_json:
        for g in reply.goals:
            print(as_json_line(g))
        return
    table = Table("goal", "status", "tasks", "tokens", "text")
    for g in reply.goals:
        tasks = ", ".join(f"{c.count} {task_word(c.status)}" for c in g.tasks)
        table.add_row(g.goal_id, goal_word(g.status), tasks, f"{g.tokens:,}", g.text[:60])
    console.print(table)


def _decide(goal_id: str, task_id: str, approve: bool, note: str, api: str) -> None:
    req = G.DecideTaskRequest(goal_id=goal_id, task_id=task_id, approve=approve, note=note)
    goal = call(api, lambda s: s.DecideTask(req, timeout=10))
    verdict = "approved" if approve else "denied"
    console.print(f"task {task_id} of {goal_id} {verdict}; goal {goal_word(goal.status)}")


NoteOpt = Annotated[str, typer.Option(help="Why (kept in the goal's audit trail).")]


@goal_app.command("approve")
def goal_approve(goal_id: str, task_id: str, note: NoteOpt = "", api: ApiOpt = DEFAULT_API) -> None:
    """Let a task held for approval run (audited as your token's name)."""
    _decide(goal_id, task_id, True, note, api)


@goal_app.command("deny")
def goal_deny(goal_id: str, task_id: str, note: NoteOpt = "", api: ApiOpt = DEFAULT_API) -> None:
    """Refuse a task held for approval: the goal fails, saying who denied what (audited)."""
    _decide(goal_id, task_id, False, note, api)


@goal_app.command("cancel")
def goal_cancel(goal_id: str, reason: NoteOpt = "", api: ApiOpt = DEFAULT_API) -> None:
    """Stop a goal: its running tasks' agents are stopped, nothing more is dispatched."""
    req = G.CancelGoalRequest(goal_id=goal_id, reason=reason)
    goal = call(api, lambda s: s.CancelGoal(req, timeout=10))
    console.print(f"goal {goal.goal_id} {goal_word(goal.status)}")
