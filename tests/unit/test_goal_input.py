"""What a goal must be before an agent is created for it: the text rules (``agent/goal.py``) and the
check against the model's context, on a scripted brain that counts one token per word."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edgehub.edge.agent.goal import MAX_GOAL_CHARS, check_goal, goal_bytes, read_goal
from edgehub.edge.agent.loop import new_agent
from edgehub.edge.errors import GoalError
from edgehub.protocol.v1 import agent_pb2
from tests.unit.test_loop import act, make_loop, run

S = agent_pb2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the goal is empty"),
        (" \t\n ", "the goal is only whitespace"),
        ("a" * (MAX_GOAL_CHARS + 1), f"is {MAX_GOAL_CHARS + 1:,} characters; at most {MAX_GOAL_CHARS:,}"),
        ("write\x00it", "control character (U+0000 at character 6)"),
        ("ring \x1b[31m", "control character (U+001B at character 6)"),
    ],
)
def test_a_text_that_cannot_be_a_goal_is_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(GoalError, match=re.escape(message)):
        check_goal(text)


def test_a_goal_is_stripped_and_may_hold_its_limit_and_line_breaks() -> None:
    assert check_goal("  write a.txt\n") == "write a.txt"
    assert check_goal("line one\n\tline two") == "line one\n\tline two"
    longest = "é" * MAX_GOAL_CHARS  # the limit counts characters, not bytes
    assert check_goal(f"\n{longest}\n") == longest


def test_goal_bytes_must_be_utf8_and_are_bounded_before_decoding() -> None:
    with pytest.raises(GoalError, match=r"in stdin is not UTF-8 text \(invalid start byte at byte 3\)"):
        goal_bytes(b"abc\xff", "stdin")
    with pytest.raises(GoalError, match="over 16,000 bytes"):
        goal_bytes(b"a" * (4 * MAX_GOAL_CHARS + 1), "stdin")
    assert goal_bytes("  grüße \n".encode(), "stdin") == "grüße"


def test_read_goal_names_a_missing_file_or_a_folder(tmp_path: Path) -> None:
    with pytest.raises(GoalError, match="not found"):
        read_goal(tmp_path / "nope.txt")
    with pytest.raises(GoalError, match="is a folder"):
        read_goal(tmp_path)
    (tmp_path / "g.txt").write_text("count the files\n")
    assert read_goal(tmp_path / "g.txt") == "count the files"


async def test_the_context_check_is_exact_and_its_message_says_the_room(tmp_path: Path) -> None:
    loop, _, _ = make_loop(tmp_path, [])
    fits = 1
    while loop.goal_problem(new_agent(f"p{fits}", " ".join(["w"] * fits))) is None:
        fits *= 2
    low, high = fits // 2, fits  # low fits, high does not: find the boundary
    while high - low > 1:
        mid = (low + high) // 2
        if loop.goal_problem(new_agent(f"p{mid}", " ".join(["w"] * mid))) is None:
            low = mid
        else:
            high = mid
    problem = loop.goal_problem(new_agent("over", " ".join(["w"] * high)))
    assert problem is not None
    assert f"the goal is {high:,} tokens" in str(problem)
    assert f"leaves {low:,} for it" in str(problem)


async def test_a_goal_the_context_cannot_hold_fails_the_agent_before_the_model_is_asked(
    tmp_path: Path,
) -> None:
    loop, store, brain = make_loop(tmp_path, [act("finish", answer="never")])
    state = await run(loop, store, goal=" ".join(["word"] * 5000))  # 5,000 tokens: over n_ctx 4,096
    assert state.status == S.AGENT_STATUS_FAILED
    assert "the goal is 5,000 tokens; the model's context of 4,096 tokens leaves" in state.failure_reason
    assert brain.prompts == []
    assert [e.kind for e in store.mind_log("a1")] == [S.STEP_KIND_END]
    fine, store2, _ = make_loop(tmp_path / "2", [act("finish", answer="ok")])
    assert (await run(fine, store2, goal="say ok")).status == S.AGENT_STATUS_FINISHED
