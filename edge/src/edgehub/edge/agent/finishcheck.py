"""The finish check: before an agent may finish, its record is held against the goal's deliverables.

"The model suggests, the platform decides" applies to finishing too: a small model often calls
``finish`` with the work half done. The record is the mind-log (every call, its arguments, what it
observed, the policy's decisions) and the workspace as it is now; the deliverables come from
``deliverables.extract``. What is missing goes back to the agent as the observation of its finish
call, within its step budget and at most ``[agent] finish_returns`` times; after that it finishes
UNVERIFIED. A deliverable the policy refused, or a file the agent overwrote though it was only to be
read, is reported but never sent back for: another attempt cannot fix it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from edgehub.protocol.v1 import agent_pb2

from ..jsontypes import JsonObject

S = agent_pb2
NUMBER = re.compile(
    r"\d|\b(?:zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|hundred)\b", re.I
)
PLACEHOLDERS = {"", "done", "ok", "okay", "finished", "complete", "completed", "yes", "success", "true"}
ECHO_CHARS = 80


@dataclass(frozen=True, slots=True)
class Shortfall:
    """A deliverable the record does not show."""

    problem: str
    returnable: bool
    """Sending the agent back could fix it."""


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def _args(event: agent_pb2.StepEvent) -> JsonObject:
    try:
        args = json.loads(event.action.args_json or "{}")
    except ValueError:
        return {}
    return args if isinstance(args, dict) else {}


def _same_path(a: object, b: str) -> bool:
    return str(a).strip().removeprefix("./") == b.removeprefix("./")


@dataclass(frozen=True, slots=True)
class Record:
    """What an agent did so far, and where its files are."""

    events: list[agent_pb2.StepEvent]
    workspace: Path
    answer: str

    def calls(self, tool: str, *, ok: bool | None = None) -> list[tuple[JsonObject, agent_pb2.StepEvent]]:
        return [
            (_args(e), e)
            for e in self.events
            if e.kind == S.STEP_KIND_ACTION
            and e.action.tool == tool
            and (ok is None or e.observation.ok == ok)
        ]

    def refused(self, target: str) -> bool:
        """The policy refused a call that named ``target``."""
        return any(
            e.observation.decision.effect in ("deny", "needs_approval") and target in e.action.args_json
            for e in self.events
        )

    def last_output(self, kind: str) -> str:
        """The first line of what the last successful ``run`` or ``read`` showed ('' when too long)."""
        tool = "run_command" if kind == "run" else "read_file"
        calls = self.calls(tool, ok=True)
        if not calls:
            return ""
        text = calls[-1][1].observation.output
        if kind == "run":
            text = text.split("\n", 1)[1] if text.startswith("exit status") and "\n" in text else ""
        line = next((x.strip() for x in text.splitlines() if x.strip()), "")
        return line if len(line) <= ECHO_CHARS else ""

    def file_text(self, target: str) -> str | None:
        path = self.workspace / target
        try:
            return path.read_text(errors="replace") if path.is_file() else None
        except OSError:
            return None


def _write(d: agent_pb2.Deliverable, r: Record) -> str:
    text = r.file_text(d.target)
    if not text or not text.strip():
        return f"{d.target} has not been written"
    if d.expect and _norm(d.expect) not in _norm(text):
        return f"{d.target} does not hold {d.expect!r}"
    wanted = r.last_output(d.echo) if d.echo else ""
    if wanted and _norm(wanted) not in _norm(text):
        return f"{d.target} does not hold what the {d.echo} showed ({wanted!r})"
    return ""


def _read(d: agent_pb2.Deliverable, r: Record) -> str:
    if any(_same_path(a.get("path", ""), d.target) for a, _ in r.calls("read_file")):
        return ""
    if any(d.target in str(a.get("command", "")) for a, _ in r.calls("run_command")):
        return ""
    return f"{d.target} has not been read"


def _run(d: agent_pb2.Deliverable, r: Record) -> str:
    if any(_norm(d.target) in _norm(str(a.get("command", ""))) for a, _ in r.calls("run_command")):
        return ""
    return f"the command {d.target!r} has not been run"


def _remember(d: agent_pb2.Deliverable, r: Record) -> str:
    notes = [f"{a.get('key', '')} {a.get('value', '')}" for a, _ in r.calls("remember", ok=True)]
    if not notes:
        return "nothing has been remembered yet"
    if d.expect and not any(_norm(d.expect) in _norm(n) for n in notes):
        return f"no remembered note holds {d.expect!r}"
    return ""


def _recall(d: agent_pb2.Deliverable, r: Record) -> str:
    return "" if r.calls("recall") else "the note has not been recalled"


def _answer(d: agent_pb2.Deliverable, r: Record) -> str:
    answer = _norm(r.answer)
    if d.expect:
        return "" if _norm(d.expect) in answer else f"the answer does not give {d.expect!r}"
    if answer.strip(" .!") in PLACEHOLDERS:
        return "the answer does not report the result the goal asks for"
    if d.echo == "number":
        asked = f" ({d.target})" if d.target else ""
        return (
            "" if NUMBER.search(answer) else f"the answer does not give the number the goal asks for{asked}"
        )
    wanted = r.last_output(d.echo) if d.echo else ""
    if wanted and _norm(wanted) not in answer:
        return f"the answer does not give what the {d.echo} showed ({wanted!r})"
    return ""


def _dir(d: agent_pb2.Deliverable, r: Record) -> str:
    return "" if (r.workspace / d.target).is_dir() else f"the folder {d.target} does not exist"


def _move(d: agent_pb2.Deliverable, r: Record) -> str:
    if (r.workspace / d.target).exists():
        return f"{d.target} is still there; it was to be moved to {d.expect}"
    return "" if (r.workspace / d.expect).exists() else f"{d.expect} does not exist"


def _keep(d: agent_pb2.Deliverable, r: Record) -> str:
    written = any(_same_path(a.get("path", ""), d.target) for a, _ in r.calls("write_file", ok=True))
    return f"{d.target} was overwritten, though the goal only reads it" if written else ""


_CHECKS = {
    "write": _write,
    "read": _read,
    "run": _run,
    "remember": _remember,
    "recall": _recall,
    "answer": _answer,
    "keep": _keep,
    "dir": _dir,
    "move": _move,
}


def unmet(
    deliverables: list[agent_pb2.Deliverable], record: Record
) -> list[tuple[agent_pb2.Deliverable, Shortfall]]:
    """Each deliverable the record does not show, with what is missing, in the goal's order (unknown
    kinds are skipped)."""
    out = []
    for d in deliverables:
        check = _CHECKS.get(d.kind)
        problem = check(d, record) if check is not None else ""
        if problem:
            returnable = d.kind != "keep" and not (d.target and record.refused(d.target))
            out.append((d, Shortfall(problem, returnable)))
    return out


def checked_in_full(d: agent_pb2.Deliverable, record: Record) -> bool:
    """The check of ``d`` held its content against the goal, not only its presence: a file or answer
    with a text the goal gives (or an output the agent observed), a note with a value; a read, a run or
    a recall is the deliverable itself."""
    if d.kind in ("write", "answer"):  # a number answers "how many", but which number is not known
        return bool(d.expect) or bool(d.echo in ("run", "read") and record.last_output(d.echo))
    if d.kind == "remember":
        return bool(d.expect)
    return True


def shortfalls(deliverables: list[agent_pb2.Deliverable], record: Record) -> list[Shortfall]:
    """What the record does not show, in the goal's order."""
    return [s for _, s in unmet(deliverables, record)]


def feedback(missing: list[Shortfall]) -> str:
    """The observation an agent sent back reads."""
    items = "; ".join(s.problem for s in missing)
    return (
        f"not finished: the platform checked the goal and found that {items}. Do what is missing, then "
        "finish; if it cannot be done, finish and say why."
    )
