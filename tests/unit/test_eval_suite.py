"""The evaluation suite as data: the bundled suite's shape, clear errors for a malformed suite file, and
that no goal is worded like a prompt demonstration (the suite must measure the agent, not its memory of
the prompt)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edgehub.edge.agent.demos import library
from edgehub.edge.agent.prompt import INTRO
from edgehub.edge.eval.suite import TIERS, SuiteError, load_suite

NGRAM = 5
"""Words in a row a goal may not share with a demonstration."""


def test_the_core_suite_has_forty_goals_or_more_in_every_tier_and_a_ci_subset() -> None:
    suite = load_suite("core")
    assert len(suite.goals) >= 40
    for tier in TIERS:
        assert len([g for g in suite.goals if g.tier == tier]) >= 3, tier
    ci = suite.select(ci_only=True)
    assert 6 <= len(ci) <= 14
    assert len({g.tier for g in ci}) >= 5


def _ngrams(text: str) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return {tuple(words[i : i + NGRAM]) for i in range(len(words) - NGRAM + 1)}


def _demo_texts() -> list[str]:
    texts = [INTRO]
    for demo in library().demos:
        texts.append(" ".join([demo.goal, *demo.plan]))
        for tool, thought, args, obs in demo.steps:
            texts.append(" ".join([tool, thought, *map(str, args.values()), obs]))
    return texts


def test_no_goal_shares_five_words_in_a_row_with_any_demonstration() -> None:
    demos = set().union(*(_ngrams(t) for t in _demo_texts()))
    shared = {g.id: sorted(_ngrams(g.goal) & demos) for g in load_suite("core").goals}
    assert not {k: v for k, v in shared.items() if v}


def test_the_ngram_check_would_catch_a_goal_copied_from_a_demonstration() -> None:
    copied = library().demos[0].goal
    assert _ngrams(copied) & set().union(*(_ngrams(t) for t in _demo_texts()))


def write(tmp_path: Path, body: str) -> str:
    path = tmp_path / "suite.toml"
    path.write_text('format = 1\nname = "t"\nrevision = 1\n' + body)
    return str(path)


GOAL = '[[goals]]\nid = "g1"\ntier = "one_tool"\ngoal = "Create x.txt with hi."\n'


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (GOAL + 'checks = [{ file = "x.txt", answer = true }]\n', "exactly one of"),
        (GOAL + "checks = [{ equals = 'hi' }]\n", "exactly one of"),
        (GOAL + "checks = []\n", "checks"),
        (GOAL.replace("one_tool", "easy") + 'checks = [{ file = "x.txt", exists = true }]\n', "tier"),
        (GOAL + 'checks = [{ file = "../x.txt", exists = true }]\n', "inside the workspace"),
        (GOAL + 'checks = [{ file = "x.txt", exist = true }]\n', "exist"),
        (
            GOAL
            + 'checks = [{ file = "x.txt", exists = true }]\n'
            + GOAL
            + 'checks = [{ status = "finished" }]\n',
            "twice",
        ),
        ("goals = [", "not valid TOML"),
    ],
)
def test_a_malformed_suite_is_refused_with_the_goal_and_key_at_fault(
    tmp_path: Path, body: str, message: str
) -> None:
    with pytest.raises(SuiteError, match=message):
        load_suite(write(tmp_path, body))


def test_a_suite_of_another_format_or_an_unknown_name_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('format = 2\nname = "t"\nrevision = 1\n')
    with pytest.raises(SuiteError, match="format 2 is not supported"):
        load_suite(str(path))
    with pytest.raises(SuiteError, match="no such suite"):
        load_suite("nonexistent")


def test_the_error_names_the_goal(tmp_path: Path) -> None:
    with pytest.raises(SuiteError) as err:
        load_suite(write(tmp_path, GOAL + 'checks = [{ status = "done" }]\n'))
    assert err.value.goal == "g1"
    assert "status" in str(err.value)


def test_select_filters_by_id_tier_and_ci_and_refuses_unknown_ones() -> None:
    suite = load_suite("core")
    assert [g.id for g in suite.select(ids=["echo-answer"])] == ["echo-answer"]
    assert {g.tier for g in suite.select(tiers=["memory"])} == {"memory"}
    with pytest.raises(SuiteError, match="unknown goal or tier: nope"):
        suite.select(ids=["nope"])
