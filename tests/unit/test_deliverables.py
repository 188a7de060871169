"""What a goal asks for (deliverables.extract) and whether a record shows it (finishcheck.shortfalls).

The phrasings here are not the evaluation suite's goals: the extractor must work on goals it was not
written against."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgehub.edge.agent.deliverables import describe, extract
from edgehub.edge.agent.finishcheck import Record, feedback, shortfalls
from edgehub.protocol.v1 import agent_pb2

S = agent_pb2


def kinds(goal: str) -> list[str]:
    return [describe(d) for d in extract(goal)]


@pytest.mark.parametrize(
    ("goal", "expected"),
    [
        ("Save the word blue to color.txt.", ["write color.txt (holding 'blue')"]),
        ("Put 'valve shut' into log/valves.txt", ["write log/valves.txt (holding 'valve shut')"]),
        (
            "Please open readme.md and tell me the version.",
            ["read readme.md", "answer with the result", "leave readme.md as it is"],
        ),
        ("Report the batch number written in batch.txt.", ["read batch.txt", "answer with the result"]),
        ("Tell me which valve valves.csv lists first.", ["read valves.csv", "answer with the result"]),
        (
            "Summarise report.txt into summary.txt.",
            ["read report.txt", "write summary.txt", "leave report.txt as it is"],
        ),
        (
            "Execute `df -h` and save what it prints to disk.txt.",
            ["run 'df -h'", "write disk.txt (holding what the run showed)"],
        ),
        ("Run uptime, then finish with ok.", ["run 'uptime'", "answer with the result (holding 'ok')"]),
        (
            "Memorise that the badge number is 5521, then recall it and finish with it.",
            [
                "remember a note (holding '5521')",
                "recall the note",
                "answer with the result (holding '5521')",
            ],
        ),
        ("How many rows does data.csv hold?", ["read data.csv", "answer with the result (a number)"]),
        ("Rename a.txt to b.txt.", ["move a.txt to b.txt"]),
        ("Shift log/x.csv over into the directory done.", []),
        ("Please move x.csv into the folder done.", ["move x.csv to done/x.csv"]),
        ("Create a folder named reports_2026 for the printouts.", ["make the folder reports_2026"]),
        ("Make a directory inside the workspace.", []),
        (
            "Store 'on' in mode.txt and open it back up to be sure.",
            ["write mode.txt (holding 'on')", "read mode.txt"],
        ),
        ("Open it again, please.", []),
        (
            "Levels.CSV lists tank levels. Put the lowest into low.txt.",
            ["read Levels.CSV", "write low.txt", "leave Levels.CSV as it is"],
        ),
        ("Notes.txt is a good name for a file.", []),
        ("Move the old logs somewhere safe.", []),
        ("The supervisor wants this done soon.", []),
    ],
)
def test_extract_reads_deliverables_from_varied_phrasings(goal: str, expected: list[str]) -> None:
    assert kinds(goal) == expected


def test_urls_and_numbers_are_not_mistaken_for_files() -> None:
    assert kinds("Fetch https://example.com/index.html, then tell me its title.") == [
        "answer with the result"
    ]
    assert kinds("Write the value 2.5 into speed.txt") == ["write speed.txt (holding '2.5')"]


def step(
    tool: str, ok: bool = True, output: str = "", effect: str = "allow", **args: object
) -> agent_pb2.StepEvent:
    e = S.StepEvent(kind=S.STEP_KIND_ACTION)
    e.action.tool, e.action.args_json = tool, json.dumps(args)
    e.observation.ok, e.observation.output = ok, output
    e.observation.decision.effect = effect
    return e


def problems(goal: str, record: Record) -> list[str]:
    return [s.problem for s in shortfalls(extract(goal), record)]


def test_the_finish_check_names_what_is_missing(tmp_path: Path) -> None:
    goal = "Save the word blue to color.txt, then read color.txt back and finish with what it says."
    empty = Record([], tmp_path, "blue")
    assert problems(goal, empty) == ["color.txt has not been written", "color.txt has not been read"]
    (tmp_path / "color.txt").write_text("blue")
    done = Record(
        [
            step("write_file", path="color.txt", content="blue"),
            step("read_file", output="blue", path="color.txt"),
        ],
        tmp_path,
        "It says blue",
    )
    assert problems(goal, done) == []
    wrong = Record(done.events, tmp_path, "done")
    assert problems(goal, wrong) == ["the answer does not report the result the goal asks for"]


def test_command_output_must_reach_the_file(tmp_path: Path) -> None:
    goal = "Run echo 42 and write its output into answer.txt."
    ran = [step("run_command", output="exit status 0\n42\n", command="echo 42")]
    (tmp_path / "answer.txt").write_text("echo (run_command -> exit status 0)")
    assert problems(goal, Record(ran, tmp_path, "42")) == [
        "answer.txt does not hold what the run showed ('42')"
    ]
    (tmp_path / "answer.txt").write_text("42\n")
    assert problems(goal, Record(ran, tmp_path, "42")) == []


def test_a_refused_or_overwritten_deliverable_is_reported_but_not_sent_back(tmp_path: Path) -> None:
    secret = shortfalls(
        extract("Show me what is inside id_rsa.key"),
        Record([step("read_file", ok=False, effect="deny", path="id_rsa.key")], tmp_path, "I cannot"),
    )
    assert secret == []  # a refused read is still an attempt
    write = shortfalls(
        extract("Write the key into secrets.env"),
        Record([step("write_file", ok=False, effect="deny", path="secrets.env")], tmp_path, "refused"),
    )
    assert [(s.problem, s.returnable) for s in write] == [("secrets.env has not been written", False)]
    (tmp_path / "report.txt").write_text("x")
    overwritten = shortfalls(
        extract("Read report.txt and tell me its first word."),
        Record(
            [step("read_file", output="x", path="report.txt"), step("write_file", path="report.txt")],
            tmp_path,
            "x",
        ),
    )
    assert [(s.problem, s.returnable) for s in overwritten] == [
        ("report.txt was overwritten, though the goal only reads it", False)
    ]


def test_notes_and_recall(tmp_path: Path) -> None:
    goal = "Memorise that the badge number is 5521, then recall it and finish with it."
    assert problems(goal, Record([step("remember", key="badge", value="5512")], tmp_path, "5521")) == [
        "no remembered note holds '5521'",
        "the note has not been recalled",
    ]
    record = Record(
        [step("remember", key="badge", value="5521"), step("recall", query="badge")], tmp_path, "5521"
    )
    assert problems(goal, record) == []


def test_folders_moves_and_counts_are_checked_in_the_workspace_and_the_answer(tmp_path: Path) -> None:
    goal = "Create a folder named out, rename a.txt to b.txt, then tell me how many files you moved."
    (tmp_path / "a.txt").write_text("a")
    assert problems(goal, Record([], tmp_path, "one file")) == [
        "the folder out does not exist",
        "a.txt is still there; it was to be moved to b.txt",
    ]
    (tmp_path / "out").mkdir()
    (tmp_path / "a.txt").rename(tmp_path / "b.txt")
    assert problems(goal, Record([], tmp_path, "1")) == []
    assert problems(goal, Record([], tmp_path, "I moved it")) == [
        "the answer does not give the number the goal asks for (how many files you moved)"
    ]


def test_feedback_tells_the_agent_what_to_do() -> None:
    text = feedback(
        [s for s in shortfalls(extract("Save the word x to y.txt"), Record([], Path("/nowhere"), ""))]
    )
    assert text.startswith(
        "not finished: the platform checked the goal and found that y.txt has not been written."
    )
