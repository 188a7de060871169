"""Evaluation statistics and reports: Wilson intervals, McNemar's exact test, the report file's round
trip and its refusal of foreign JSON, and comparing two reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgehub.edge.eval.checks import Verdict
from edgehub.edge.eval.compare import compare, comparison_rows
from edgehub.edge.eval.report import GoalRun, Report, goal_rows, summary_rows
from edgehub.edge.eval.stats import Rate, binomial_two_sided, mcnemar, wilson
from edgehub.edge.eval.suite import SuiteError


def test_wilson_interval_matches_known_values() -> None:
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)
    assert str(Rate(3, 4)) == "75% (3/4, 95% CI 30%-95%)"


def test_mcnemar_exact_test() -> None:
    assert binomial_two_sided(0, 0) == 1.0
    assert binomial_two_sided(0, 6) == pytest.approx(2 / 64)
    assert binomial_two_sided(3, 6) == 1.0
    same = mcnemar([(True, True)] * 10 + [(False, False)] * 10)
    assert (same.gained, same.lost, same.p_value) == (0, 0, 1.0)
    better = mcnemar([(False, True)] * 7 + [(True, True)] * 5)
    assert better.gained == 7
    assert better.significant()
    assert not mcnemar([(False, True)] * 2 + [(True, False)]).significant()


def run(
    goal: str, success: bool, tier: str = "one_tool", repeat: int = 0, status: str = "finished"
) -> GoalRun:
    return GoalRun(
        goal_id=goal,
        tier=tier,
        repeat=repeat,
        success=success,
        category="" if success else "wrong_arguments",
        status=status,
        failure_reason="",
        answer="x",
        verified="verified",
        steps=3,
        tokens=900,
        wall_s=4.5,
        tools=["write_file", "finish"],
        verdicts=[Verdict("file='a' equals='b'", success, "" if success else "a is 'c', not 'b'")],
    )


def report(*runs: GoalRun, model: str = "m.gguf", revision: int = 1) -> Report:
    return Report("core", revision, model, "chat", {"agent": {"plan": False}}, "test machine", list(runs))


def test_a_report_round_trips_through_json_and_summarises(tmp_path: Path) -> None:
    r = report(run("a", True), run("b", False), run("c", True, tier="memory"))
    path = tmp_path / "r.json"
    r.save(path)
    back = Report.load(path)
    assert back == r
    assert str(back.rate()) == "67% (2/3, 95% CI 21%-94%)"
    assert back.false_finishes() == 1
    assert back.verified_but_wrong() == 1
    assert [row[0] for row in summary_rows(back)] == ["one_tool", "memory", "all"]
    assert goal_rows(back)[1][:4] == ["b", "one_tool", "0/1", "wrong_arguments"]


@pytest.mark.parametrize("text", ["not json", "[]", '{"format": 9}', '{"format": 1, "runs": [{"x": 1}]}'])
def test_a_file_that_is_not_a_report_gets_a_clear_error(text: str) -> None:
    with pytest.raises(SuiteError):
        Report.from_json(text, where="r.json")


def test_compare_pairs_runs_and_says_what_changed() -> None:
    a = report(*(run(f"g{i}", i < 2) for i in range(10)))
    b = report(*(run(f"g{i}", i < 9) for i in range(10)), model="other.gguf")
    result = compare(a, b)
    assert (result.test.gained, result.test.lost) == (7, 0)
    assert result.test.significant()
    assert "+ g2 #0: gained" in result.changed_goals()
    rows = {row[0]: row for row in comparison_rows(result)}
    assert rows["all"][3] == "+70 pp"
    assert rows["model"][1:3] == ["m.gguf", "other.gguf"]


def test_reports_of_different_suite_revisions_are_not_compared() -> None:
    with pytest.raises(SuiteError, match="not comparable"):
        compare(report(run("a", True)), report(run("a", True), revision=2))
