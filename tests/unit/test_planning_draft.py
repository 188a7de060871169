"""The planner model's answer format: its JSON schema (fit for llama.cpp's grammar converter) and the
parser that rejects malformed or hostile answers with a readable reason."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf import json_format

from edgehub.hub.goals import PlanDraft, PlanRejected, draft_schema, parse_draft
from edgehub.hub.goals.draft import MAX_GOAL, MAX_TASKS, MAX_TEXT, draft_of
from edgehub.protocol.v1 import goals_pb2

GRAMMAR_KEYWORDS = {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "pattern",
    "enum",
}


def task(id: str = "a", **over: Any) -> dict[str, Any]:
    return {"id": id, "goal": f"do {id}", "needs": [], "tools": ["read_file"], "estimate_tokens": 100} | over


def answer(*tasks: dict[str, Any]) -> str:
    return json.dumps({"tasks": list(tasks)})


def keywords(schema: object) -> set[str]:
    """Every keyword used in ``schema`` (property names aside)."""
    if isinstance(schema, list):
        return set().union(*(keywords(s) for s in schema))
    if not isinstance(schema, dict):
        return set()
    found = set(schema)
    for key, value in schema.items():
        if key == "properties":
            found |= set().union(*(keywords(v) for v in value.values()))
        else:
            found |= keywords(value)
    return found


def test_a_well_formed_answer_parses() -> None:
    draft = parse_draft(answer(task("scan"), task("report", needs=["scan"], tools=[])))
    assert [t.id for t in draft.tasks] == ["scan", "report"]
    assert draft.tasks[1].needs == ["scan"]
    assert draft.tasks[0].labels == {}


@pytest.mark.parametrize("tools", [None, ["read_file", "run_command"]])
@pytest.mark.parametrize("labels", [False, True])
def test_the_schema_uses_only_keywords_the_grammar_converter_knows(
    tools: list[str] | None, labels: bool
) -> None:
    schema = draft_schema(tools, labels=labels)
    assert keywords(schema) <= GRAMMAR_KEYWORDS
    props = schema["properties"]["tasks"]["items"]["properties"]
    assert ("labels" in props) is labels


def test_the_schema_compiles_to_a_llama_cpp_grammar() -> None:
    llama_grammar = pytest.importorskip("llama_cpp.llama_grammar")
    from edgehub.llm.llama import grammar_schema

    for schema in (draft_schema(), draft_schema(["read_file", "finish"], labels=True)):
        grammar = llama_grammar.LlamaGrammar.from_json_schema(
            json.dumps(grammar_schema(schema)), verbose=False
        )
        assert "estimate-tokens" in grammar._grammar


def test_the_schema_with_fleet_tools_only_allows_those() -> None:
    tool = draft_schema(["run_command", "read_file", "read_file"])["properties"]["tasks"]["items"]
    assert tool["properties"]["tools"]["items"]["enum"] == ["read_file", "run_command"]


def test_what_the_schema_describes_the_parser_accepts() -> None:
    """The model writes every required property and, with labels on, may write selectors."""
    schema_task = draft_schema(labels=True)["properties"]["tasks"]["items"]
    full = task("a", labels={"site": "hall-5"}, avoid={"gpu": "none"})
    assert set(full) == set(schema_task["properties"])
    assert parse_draft(answer(full)).tasks[0].avoid == {"gpu": "none"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "not valid JSON"),
        ('{"tasks": [', "not valid JSON"),
        ("Sure! Here is the plan:", "not valid JSON"),
        ("[]", "answer: Input should be an object"),
        ("{}", "tasks: Field required"),
        ('{"tasks": []}', "tasks: List should have at least 1 item"),
        (answer(task(goal="   ")), "tasks.0.goal: String should have at least 1 character"),
        (answer(task(estimate_tokens="12")), "tasks.0.estimate_tokens: Input should be a valid integer"),
        (answer(task(estimate_tokens=True)), "tasks.0.estimate_tokens: Input should be a valid integer"),
        (answer(task(estimate_tokens=0)), "tasks.0.estimate_tokens: Input should be greater than or equal"),
        (answer(task(id="Scan Line 3")), "tasks.0.id: String should match pattern"),
        (answer(task(needs=["../etc"])), "tasks.0.needs.0: String should match pattern"),
        (answer(task(priority="high")), "tasks.0.priority: Extra inputs are not permitted"),
        (answer(task(tools="read_file")), "tasks.0.tools: Input should be a valid array"),
    ],
)
def test_bad_answers_are_rejected_with_a_reason(text: str, expected: str) -> None:
    with pytest.raises(PlanRejected) as caught:
        parse_draft(text)
    assert expected in caught.value.reason
    assert str(caught.value).startswith("plan rejected: ")


def test_huge_strings_are_rejected_without_being_echoed() -> None:
    with pytest.raises(PlanRejected) as caught:
        parse_draft(answer(task(goal="x" * (MAX_GOAL + 1))))
    assert f"at most {MAX_GOAL} characters" in caught.value.reason
    assert "xxxxxxxxxx" not in caught.value.reason


def test_an_oversized_answer_is_rejected_before_parsing() -> None:
    with pytest.raises(PlanRejected, match=f"at most {MAX_TEXT} are read"):
        parse_draft('{"tasks": [' + " " * MAX_TEXT + "]}")


def test_too_many_tasks_are_rejected_and_many_errors_summarised() -> None:
    with pytest.raises(PlanRejected, match=f"at most {MAX_TASKS} items"):
        parse_draft(answer(*(task(f"t{i}") for i in range(MAX_TASKS + 1))))
    with pytest.raises(PlanRejected, match=r"\(and 2 more\)"):
        parse_draft(answer(*(task(f"T{i}") for i in range(5))))


def test_a_draft_is_immutable() -> None:
    draft = parse_draft(answer(task()))
    assert isinstance(draft, PlanDraft)
    with pytest.raises(ValueError, match="frozen"):
        draft.tasks[0].goal = "something else"  # type: ignore[misc]


def test_an_operators_plan_message_is_checked_as_a_models_answer_is() -> None:
    text = answer(task("a"), task("b", needs=["a"], labels={"site": "hall-5"}, subgoal=True))
    message = json_format.Parse(text, goals_pb2.PlanDraft())
    assert draft_of(message) == parse_draft(text)
    bad = json_format.Parse(answer(task("A B"), task("c", estimate_tokens=0, goal="")), goals_pb2.PlanDraft())
    with pytest.raises(PlanRejected) as exc:
        draft_of(bad)
    for where in ("tasks.0.id", "tasks.1.goal", "tasks.1.estimate_tokens"):
        assert where in exc.value.reason
    with pytest.raises(PlanRejected, match="tasks: List should have at least 1 item"):
        draft_of(goals_pb2.PlanDraft())
