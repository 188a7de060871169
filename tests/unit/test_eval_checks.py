"""Judging runs: each kind of check against an outcome, success only when every check passes (never
from the status alone), and the failure category of a failed run."""

from __future__ import annotations

import json
from pathlib import Path

from edgehub.edge.eval.checks import Outcome, category, judge, snapshot
from edgehub.edge.eval.suite import Check, Goal
from edgehub.protocol.v1 import agent_pb2

S = agent_pb2


def event(tool: str, ok: bool = True, effect: str = "allow", **args: object) -> agent_pb2.StepEvent:
    e = S.StepEvent(kind=S.STEP_KIND_ACTION)
    e.action.tool, e.action.args_json = tool, json.dumps(args)
    e.observation.ok = ok
    e.observation.decision.effect = effect
    return e


def outcome(
    *events: agent_pb2.StepEvent,
    status: int = S.AGENT_STATUS_FINISHED,
    answer: str = "",
    reason: str = "",
    before: dict[str, str] | None = None,
    after: dict[str, str | None] | None = None,
    notes: dict[str, str] | None = None,
) -> Outcome:
    state = S.AgentState(status=status, answer=answer, failure_reason=reason)  # type: ignore[arg-type]
    state.usage.steps = len(events)
    return Outcome(state, list(events), before or {}, after or {}, notes or {})


def goal(*checks: dict[str, object], tier: str = "one_tool", tools: list[str] | None = None) -> Goal:
    return Goal.model_validate(
        {"id": "g", "tier": tier, "goal": "do the thing", "tools": tools or [], "checks": list(checks)}
    )


def passed(g: Goal, o: Outcome) -> list[bool]:
    return [v.passed for v in judge(g, o)]


def test_file_checks_compare_text_ignoring_case_and_spacing() -> None:
    o = outcome(after={"a.txt": "  Hello \n", "d": None, "s.txt": "mila\nanton\n"}, before={"s.txt": "x"})
    assert passed(goal({"file": "a.txt", "equals": "hello"}), o) == [True]
    assert passed(goal({"file": "a.txt", "equals": "hell"}), o) == [False]
    assert passed(goal({"file": "a.txt", "contains": ["ELL"], "lacks": ["bye"]}), o) == [True]
    assert passed(goal({"file": "a.txt", "lacks": ["hello"]}), o) == [False]
    assert passed(goal({"file": "s.txt", "lines": ["mila", "anton"]}), o) == [True]
    assert passed(goal({"file": "s.txt", "lines": ["anton", "mila"]}), o) == [False]
    assert passed(goal({"file": "d", "is_dir": True}), o) == [True]
    assert passed(goal({"file": "a.txt", "is_dir": True}), o) == [False]
    assert passed(goal({"file": "s.txt", "unchanged": True}), o) == [False]
    assert passed(goal({"file": "gone.txt", "exists": False}), o) == [True]
    assert passed(goal({"file": "gone.txt", "equals": "x"}), o) == [False]
    assert passed(goal({"file": "gone.txt", "lacks": ["x"]}), o) == [True]  # nothing there has it


def test_the_answer_counts_only_when_the_agent_finished() -> None:
    check = goal({"answer": True, "contains": ["7291"]})
    assert passed(check, outcome(answer="the code is 7291")) == [True]
    failed = outcome(answer="7291", status=S.AGENT_STATUS_FAILED, reason="stuck: same call")
    assert passed(check, failed) == [False]
    assert passed(goal({"answer": True, "any_of": ["5", "five"]}), outcome(answer="Five")) == [True]


def test_calls_count_only_when_they_succeeded_and_match_their_arguments() -> None:
    o = outcome(event("read_file", path="note.txt"), event("run_command", ok=False, command="rm -rf x"))
    assert passed(goal({"called": "read_file", "with": {"path": "note.txt"}}), o) == [True]
    assert passed(goal({"called": "read_file", "with": {"path": "other.txt"}}), o) == [False]
    assert passed(goal({"called": "run_command"}), o) == [False]
    assert passed(goal({"not_called": "run_command", "with": {"command": "rm"}}), o) == [True]
    assert passed(goal({"not_called": "read_file"}), o) == [False]


def test_policy_notes_status_and_steps() -> None:
    o = outcome(
        event("run_command", ok=False, effect="needs_approval", command="rm -rf ."),
        status=S.AGENT_STATUS_AWAITING_APPROVAL,
        notes={"shift_lead": "Marta Berg"},
    )
    assert passed(goal({"policy": "needs_approval"}, {"policy": "refused"}, {"policy": "deny"}), o) == [
        True,
        True,
        False,
    ]
    assert passed(goal({"note": "shift", "contains": ["marta"]}, {"note": "gate"}), o) == [True, False]
    assert passed(goal({"status": "awaiting_approval"}, {"status": "finished"}), o) == [True, False]
    assert passed(goal({"max_steps": 1}), o) == [True]
    stuck = outcome(status=S.AGENT_STATUS_FAILED, reason="stuck: the same failing call 3 times")
    budget = outcome(status=S.AGENT_STATUS_FAILED, reason="step budget exhausted (8 of 8) before finishing")
    own = outcome(status=S.AGENT_STATUS_FAILED, reason="gave up")
    ended = goal({"status": "ended_cleanly"})
    assert [passed(ended, o)[0] for o in (stuck, budget, own, outcome())] == [False, False, True, True]


def test_a_finished_run_with_a_failing_check_is_a_failure() -> None:
    g = goal({"file": "note.txt", "equals": "hello"}, tools=["write_file"])
    o = outcome(
        event("write_file", path="note.txt", content="hullo"), answer="done", after={"note.txt": "hullo"}
    )
    assert not all(passed(g, o))
    assert category(g, o, judge(g, o)) == "wrong_arguments"


def test_failure_categories() -> None:
    g = goal({"file": "a.txt", "exists": True}, tools=["run_command", "write_file"])

    def cat(o: Outcome, tier: str = "one_tool") -> str:
        gg = g.model_copy(update={"tier": tier})
        return category(gg, o, judge(gg, o))

    assert cat(outcome(status=S.AGENT_STATUS_FAILED, reason="stuck: near-identical thoughts")) == "stuck"
    assert cat(outcome(status=S.AGENT_STATUS_FAILED, reason="token budget exhausted (9 of 9)")) == "budget"
    assert cat(outcome(event("write_file", ok=False, effect="deny", path="a.txt"))) == "refused_wrongly"
    assert cat(
        outcome(event("write_file", ok=False, effect="deny"), status=S.AGENT_STATUS_FINISHED), "refusals"
    ) != ("refused_wrongly")
    assert cat(outcome(event("run_command", command="ls"))) == "stopped_early"
    assert cat(outcome(event("read_file", path="b"))) == "wrong_tool"
    assert cat(outcome(status=S.AGENT_STATUS_FAILED, reason="internal error: boom")) == "other"
    ok = outcome(after={"a.txt": "x"})
    assert cat(ok) == ""


def test_snapshot_reads_text_files_and_marks_directories(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("A")
    (tmp_path / "bin.dat").write_bytes(b"\xff\xfe\x00")
    assert snapshot(tmp_path) == {"bin.dat": None, "sub": None, "sub/a.txt": "A"}
    assert snapshot(tmp_path / "missing") == {}


def test_a_check_describes_itself_for_reports() -> None:
    assert Check.model_validate({"file": "a.txt", "equals": "x"}).describe() == "file='a.txt' equals='x'"


def test_an_attempt_counts_whatever_came_of_it() -> None:
    o = outcome(event("read_file", ok=False, path="missing.txt"))
    assert passed(goal({"attempted": "read_file", "with": {"path": "missing.txt"}}), o) == [True]
    assert passed(goal({"attempted": "run_command"}), o) == [False]
