"""``edgehub goal ...``: goals planned by the hub into task DAGs and run across the fleet (through the
hub's management API; credentials as for ``edgehub agents``)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from edgehub.cli.common import ExitCode, JsonOpt, exit_with, fail
from edgehub.protocol.v1 import hub_pb2

from .api import DEFAULT_API, ApiOpt, call

console = Console()
if not console.is_terminal:  # piped or logged: the DAG's table needs more than rich's default 80 columns
    console = Console(width=160)

H = hub_pb2
goal_app = typer.Typer(
    help="Goals: planned by the hub into a DAG of tasks, run by agents across the fleet.",
    no_args_is_help=True,
)
ENDED = ("done", "failed", "cancelled")
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
    "planner": "synthesised by the planner",
    "task": "the last task's",
    "joined": "the last tasks' answers joined",
}


def _labels(spec: str) -> dict[str, str]:
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key or not value:
            fail(f"--devices: {part!r} is not KEY=VALUE (e.g. --devices site=hall-5,profile=x86-ipc)")
        out[key] = value
    return out


def _record(goal: H.Goal) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(goal.record_json or "{}")
    return record


def _bar(start: float, end: float, t0: float, span: float) -> str:
    if not start:
        return ""
    a = int(BAR * (start - t0) / span)
    b = max(a + 1, int(BAR * (end - t0) / span))
    return " " * a + "█" * (min(b, BAR) - a)


def show(goal: H.Goal) -> None:
    """The goal's DAG, level by level: each task's status, device, attempts, timings and tokens, and a
    timeline where tasks that ran in parallel overlap."""
    r = _record(goal)
    tasks = r["revisions"][-1]["tasks"] if r.get("revisions") else []
    states = r.get("tasks", {})
    t0 = float(r.get("submitted_at", 0))
    now = time.time()
    ends = [float(s.get("finished_at") or now) for s in states.values() if s.get("dispatched_at")]
    span = max([*ends, t0 + 1e-3]) - t0
    colour = COLOURS.get(goal.status, "white")
    console.print(
        f"goal [bold]{goal.goal_id}[/] [{colour}]{goal.status}[/], plan revision {goal.revision}, "
        f"by {r.get('submitted_by', '?')}: {r.get('text', '')[:200]}"
    )
    table = Table("level", "task", "needs", "status", "device", "try", "start", "took", "tokens", "timeline")
    for t in tasks:
        s = states.get(t["id"], {})
        status = s.get("status", "?")
        start = float(s.get("started_at") or s.get("dispatched_at") or 0)
        end = float(s.get("finished_at") or (now if start else 0))
        table.add_row(
            str(t["level"]),
            t["id"] + (" (sub-goal)" if t.get("subgoal") else ""),
            ", ".join(t["needs"]) or "-",
            f"[{COLOURS.get(status, 'white')}]{status}[/]",
            s.get("device", "-"),
            str(s.get("attempt", 0)),
            f"+{start - t0:.1f}s" if start else "-",
            f"{end - start:.1f}s" if start else "-",
            f"{s.get('usage', {}).get('tokens', 0):,}",
            f"[{COLOURS.get(status, 'white')}]{_bar(start, end, t0, span)}[/]",
        )
    console.print(table)
    for t in tasks:
        s = states.get(t["id"], {})
        why = s.get("waiting_for") or (s.get("error") if s.get("status") not in ("done",) else "")
        if why:
            console.print(f"  {t['id']}: [yellow]{why}[/]")
    u = r.get("usage", {})
    per_device = ", ".join(f"{d} {v['tokens']:,}" for d, v in sorted(u.get("by_device", {}).items()))
    console.print(
        f"usage: {u.get('tokens', 0):,} tokens ({per_device or 'no device yet'}), "
        f"{u.get('tool_calls', 0)} tool calls, planner {u.get('planner_tokens', 0):,} tokens"
    )
    for rev in r.get("revisions", []):
        for repair in rev.get("repairs", []):
            console.print(f"  revision {rev['revision']} repaired: {repair}")
        for reason in rev.get("rejected", []):
            console.print(f"  revision {rev['revision']}: a draft was rejected: {reason}")
    if goal.error:
        console.print(f"[red]error:[/] {goal.error}")
    if goal.answer:
        how = ANSWER_BY.get(r.get("answer_by", ""), "")
        console.print(f"[bold]answer{f' ({how})' if how else ''}:[/] {goal.answer}")
    if r.get("synthesis_error"):
        console.print(f"  [yellow]the planner could not synthesise the answer: {r['synthesis_error']}[/]")


def _wait(goal: H.Goal, api: str, seconds: float) -> H.Goal:
    deadline = time.monotonic() + seconds
    req = H.GetGoalRequest(goal_id=goal.goal_id)
    while goal.status not in ENDED and time.monotonic() < deadline:
        time.sleep(0.5)
        goal = call(api, lambda s: s.GetGoal(req, timeout=10))
    return goal


def _out(goal: H.Goal, as_json: bool) -> None:
    if as_json:
        print(goal.record_json)
    else:
        show(goal)
    if goal.status in ("failed", "cancelled"):
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

    Exit code 1 when planning fails (the reasons are shown), or the goal fails within --wait."""
    plan_json = ""
    if plan is not None:
        try:
            plan_json = plan.read_text()
        except OSError as exc:
            fail(f"cannot read the plan {plan}: {exc.strerror}")
    req = H.SubmitGoalRequest(
        text=text,
        labels=_labels(devices),
        budget=H.GoalBudget(
            max_tokens=budget_tokens,
            max_wall_seconds=budget_seconds,
            max_tool_calls=budget_tool_calls,
            max_retries=retries,
        ),
        plan_json=plan_json,
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
    goal = call(api, lambda s: s.GetGoal(H.GetGoalRequest(goal_id=goal_id), timeout=10))
    _out(_wait(goal, api, wait), as_json)


@goal_app.command("list")
def goal_list(api: ApiOpt = DEFAULT_API, as_json: JsonOpt = False) -> None:
    """Every goal the hub keeps, oldest first."""
    reply = call(api, lambda s: s.ListGoals(H.ListGoalsRequest(), timeout=10))
    if as_json:
        for g in reply.goals:
            print(g.record_json)
        return
    table = Table("goal", "status", "tasks", "tokens", "text")
    for g in reply.goals:
        r = _record(g)
        tasks = ", ".join(f"{n} {s}" for s, n in sorted(r.get("tasks", {}).items()))
        table.add_row(g.goal_id, g.status, tasks, f"{r.get('tokens', 0):,}", r.get("text", "")[:60])
    console.print(table)


def _decide(goal_id: str, task_id: str, approve: bool, note: str, api: str) -> None:
    req = H.DecideTaskRequest(goal_id=goal_id, task_id=task_id, approve=approve, note=note)
    goal = call(api, lambda s: s.DecideTask(req, timeout=10))
    console.print(f"task {task_id} of {goal_id} {'approved' if approve else 'denied'}; goal {goal.status}")


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
    req = H.CancelGoalRequest(goal_id=goal_id, reason=reason)
    goal = call(api, lambda s: s.CancelGoal(req, timeout=10))
    console.print(f"goal {goal.goal_id} {goal.status}")
