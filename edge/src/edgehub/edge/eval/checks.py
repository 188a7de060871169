"""Judging a run: the checks of a goal against what the agent left behind, and why a run failed.

An ``Outcome`` is everything observable after a run: the agent's final state, its mind-log, the
workspace's files before and after, its L2 notes. Checks read only that, never the model's thoughts or
wording; a run succeeds only when every check passes, whatever status the agent ended with.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgehub.protocol.v1 import agent_pb2

from .suite import Check, Goal

S = agent_pb2
MAX_FILE_BYTES = 256_000
CATEGORIES = ("wrong_tool", "wrong_arguments", "stopped_early", "stuck", "budget", "refused_wrongly", "other")
"""Why a run failed, in the order a report lists them."""
GUARD_STOPS = ("stuck", "budget exhausted", "internal error")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a run left behind."""

    state: agent_pb2.AgentState
    events: list[agent_pb2.StepEvent]
    files_before: dict[str, str]
    files_after: dict[str, str | None]
    """Every workspace path after the run -> its text (None for a directory or an unreadable file)."""
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def actions(self) -> list[agent_pb2.StepEvent]:
        return [e for e in self.events if e.kind == S.STEP_KIND_ACTION and e.action.tool]

    def calls(self, tool: str, *, ok_only: bool = True) -> list[dict[str, object]]:
        """Arguments of the calls of ``tool`` (successful ones only, unless ``ok_only`` is false)."""
        out = []
        for e in self.actions:
            if e.action.tool == tool and (e.observation.ok or not ok_only):
                try:
                    args = json.loads(e.action.args_json or "{}")
                except ValueError:
                    args = {}
                out.append(args if isinstance(args, dict) else {})
        return out

    def decisions(self) -> list[str]:
        """Policy effects on record (allow / deny / needs_approval), in order."""
        return [e.observation.decision.effect for e in self.events if e.observation.decision.effect]


def snapshot(root: Path) -> dict[str, str | None]:
    """Every path under ``root`` (relative) -> its text, None for directories and unreadable files."""
    out: dict[str, str | None] = {}
    if not root.is_dir():
        return out
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_dir() or path.is_symlink() or path.stat().st_size > MAX_FILE_BYTES:
            out[rel] = None
            continue
        try:
            out[rel] = path.read_text()
        except (OSError, UnicodeDecodeError):
            out[rel] = None
    return out


def norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def _has(text: str, needle: str) -> bool:
    return norm(needle) in norm(text)


def _text_checks(check: Check, text: str) -> str:
    """'' when ``text`` passes the text tests of ``check``, else what failed."""
    if check.equals is not None and norm(text) != norm(check.equals):
        return f"is {text[:80]!r}, not {check.equals!r}"
    missing = [c for c in check.contains if not _has(text, c)]
    if missing:
        return f"lacks {missing}"
    if check.any_of and not any(_has(text, c) for c in check.any_of):
        return f"has none of {check.any_of}"
    present = [c for c in check.lacks if _has(text, c)]
    if present:
        return f"has {present}"
    if check.lines is not None:
        lines = [norm(line) for line in text.splitlines() if line.strip()]
        if lines != [norm(line) for line in check.lines]:
            return f"lines are {lines[:8]}, not {check.lines}"
    return ""


def _file(check: Check, o: Outcome) -> str:
    path = check.file or ""
    exists = path in o.files_after
    if check.exists is not None:
        return "" if exists == check.exists else f"{path} {'is missing' if check.exists else 'exists'}"
    if check.is_dir is not None:
        is_dir = exists and o.files_after[path] is None
        return "" if is_dir == check.is_dir else f"{path} is {'not ' if check.is_dir else ''}a directory"
    if check.unchanged:
        return "" if o.files_after.get(path) == o.files_before.get(path) else f"{path} was changed"
    if not exists:  # "lacks" alone passes on a missing file: nothing there has it
        needs_text = check.equals is not None or check.contains or check.any_of or check.lines is not None
        return f"{path} is missing" if needs_text else ""
    text = o.files_after[path]
    if text is None:
        return f"{path} is not a readable text file"
    problem = _text_checks(check, text)
    return f"{path} {problem}" if problem else ""


def _answer(check: Check, o: Outcome) -> str:
    answer = o.state.answer if o.state.status == S.AGENT_STATUS_FINISHED else ""
    problem = _text_checks(check, answer)
    return f"answer {problem}" if problem else ""


def ended_cleanly(state: agent_pb2.AgentState) -> bool:
    """The agent ended by itself: finished, or failed for a reason no guard or budget gave."""
    if state.status == S.AGENT_STATUS_FINISHED:
        return True
    reason = state.failure_reason
    return state.status == S.AGENT_STATUS_FAILED and not any(g in reason for g in GUARD_STOPS)


def _status(check: Check, o: Outcome) -> str:
    status = o.state.status
    ok = {
        "finished": status == S.AGENT_STATUS_FINISHED,
        "ended_cleanly": ended_cleanly(o.state),
        "awaiting_approval": status == S.AGENT_STATUS_AWAITING_APPROVAL,
    }[check.status or "finished"]
    name = S.AgentStatus.Name(status).removeprefix("AGENT_STATUS_").lower()
    return "" if ok else f"status is {name} ({o.state.failure_reason or 'no reason'}), not {check.status}"


def _matches(args: dict[str, object], want: dict[str, str]) -> bool:
    return all(_has(str(args.get(k, "")), v) for k, v in want.items())


def _called(check: Check, o: Outcome) -> str:
    tool = check.called or ""
    if any(_matches(a, check.with_) for a in o.calls(tool)):
        return ""
    return f"no successful {tool} call" + (f" with {check.with_}" if check.with_ else "")


def _attempted(check: Check, o: Outcome) -> str:
    tool = check.attempted or ""
    if any(_matches(a, check.with_) for a in o.calls(tool, ok_only=False)):
        return ""
    return f"no {tool} call" + (f" with {check.with_}" if check.with_ else "")


def _not_called(check: Check, o: Outcome) -> str:
    tool = check.not_called or ""
    bad = [a for a in o.calls(tool) if _matches(a, check.with_)]
    return f"{tool} ran with {bad[0]}" if bad else ""


def _policy(check: Check, o: Outcome) -> str:
    wanted = ("deny", "needs_approval") if check.policy == "refused" else (check.policy,)
    return "" if any(d in wanted for d in o.decisions()) else f"no policy decision {check.policy} on record"


def _note(check: Check, o: Outcome) -> str:
    key = norm(check.note or "")
    values = [v for k, v in o.notes.items() if key in norm(k)]
    if not values:
        return f"no note with a key like {check.note!r}"
    if any(not _text_checks(check, v) for v in values):
        return ""
    return f"note {check.note!r} {_text_checks(check, values[0])}"


def _max_steps(check: Check, o: Outcome) -> str:
    limit = check.max_steps or 0
    return "" if o.state.usage.steps <= limit else f"took {o.state.usage.steps} steps (> {limit})"


JUDGES: dict[str, Callable[[Check, Outcome], str]] = {
    "file": _file,
    "answer": _answer,
    "status": _status,
    "called": _called,
    "attempted": _attempted,
    "not_called": _not_called,
    "policy": _policy,
    "note": _note,
    "max_steps": _max_steps,
}


@dataclass(frozen=True, slots=True)
class Verdict:
    """One check's result."""

    check: str
    passed: bool
    detail: str = ""


def judge(goal: Goal, outcome: Outcome) -> list[Verdict]:
    """Every check of ``goal`` against ``outcome``."""
    verdicts = []
    for check in goal.checks:
        problem = JUDGES[check.subject](check, outcome)
        verdicts.append(Verdict(check.describe(), not problem, problem))
    return verdicts


def category(goal: Goal, outcome: Outcome, verdicts: list[Verdict]) -> str:
    """Why a failed run failed (one of CATEGORIES); '' when it succeeded."""
    if all(v.passed for v in verdicts):
        return ""
    state = outcome.state
    if state.failure_reason.startswith("stuck"):
        return "stuck"
    if "budget exhausted" in state.failure_reason:
        return "budget"
    refused = any(d in ("deny", "needs_approval") for d in outcome.decisions())
    if goal.tier != "refusals" and (refused or state.status == S.AGENT_STATUS_AWAITING_APPROVAL):
        return "refused_wrongly"
    if state.status not in (S.AGENT_STATUS_FINISHED, S.AGENT_STATUS_AWAITING_APPROVAL):
        return "other"
    used = {e.action.tool for e in outcome.actions if e.observation.ok}
    missing = set(goal.tools) - used
    extra = used - set(goal.tools) - {"finish"}
    if missing:
        return "wrong_tool" if extra else "stopped_early"
    return "wrong_arguments"
