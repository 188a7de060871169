"""The planner's model calls: a goal and the fleet's tools in, a validated ``Plan`` out; and at the
end, the results of the plan's last tasks in, the goal's answer out (``synthesise_with_model``).

The hub's own llama.cpp model (``edgehub.llm``, the edges' brain code) writes a draft constrained to
``draft_schema`` by grammar; ``parse_draft`` and ``validate`` check it. A rejected draft is not
dispatched: the model is asked again with the reason (up to ``attempts`` drafts), and the goal fails
with every reason when none passes. Operators may also write the plan themselves (a ``PlanDraft``
message, ``plan_given``): it passes the same checks, once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from edgehub.llm import Completion
from edgehub.protocol.v1 import goals_pb2

from .draft import draft_of, draft_schema, parse_draft
from .errors import PlanRejected, SynthesisFailed
from .placement import DeviceView
from .validate import Limits, Plan, validate

Complete = Callable[[str, dict[str, object], int], Awaitable[Completion]]
"""(prompt, json_schema, max_tokens) -> the model's completion (``ModelGate.complete`` underneath)."""

EXAMPLE = {
    "tasks": [
        {"id": "read-a", "goal": "Read sensor A and report its value.", "needs": [], "tools": [],
         "estimate_tokens": 2000},
        {"id": "read-b", "goal": "Read sensor B and report its value.", "needs": [], "tools": [],
         "estimate_tokens": 2000},
        {"id": "compare", "goal": "Compare the two readings and say which is higher.",
         "needs": ["read-a", "read-b"], "tools": [], "estimate_tokens": 1500},
    ]
}  # fmt: skip


def prompt(
    goal: str, tools: Sequence[str], limits: Limits, feedback: Sequence[str] = (), depth: int = 0
) -> str:
    """The planner's prompt. Short: the hub's default model is small, and every token is evaluated."""
    lines = [
        "You plan work for a fleet of edge devices. Each task is done by one agent on one device.",
        "Split the goal into a few small tasks. Tasks that do not need each other run in parallel;",
        "a task lists in needs the ids of the tasks whose results it uses.",
        f"Use at most {limits.max_tasks} tasks and at most {limits.task_tokens} estimate_tokens per task.",
        f"Tools the devices offer: {', '.join(sorted(tools)) or 'none'}. List only the tools a task needs.",
        f"Example: {json.dumps(EXAMPLE)}",
    ]
    if depth:
        lines.append(f"This goal is part of a larger goal (planning depth {depth}).")
    for reason in feedback:
        lines.append(f"An earlier plan was rejected: {reason}. Write a plan without that problem.")
    lines += [f"Goal: {goal}", "Plan (JSON):"]
    return "\n".join(lines)


@dataclass
class Planned:
    plan: Plan
    drafts: int
    """Drafts the model wrote (1 = the first passed)."""
    rejected: list[str] = field(default_factory=list)
    """Why each earlier draft was refused."""
    tokens: int = 0
    """Tokens the model read and wrote, all drafts (the planner's cost)."""


async def plan_with_model(
    complete: Complete,
    goal: str,
    fleet: Sequence[DeviceView],
    limits: Limits,
    *,
    attempts: int = 3,
    max_tokens: int = 768,
    depth: int = 0,
    subgoals: bool = False,
    feedback: Sequence[str] = (),
) -> Planned:
    """Ask the model for a plan until one passes ``validate``; ``PlanRejected`` with every reason when
    ``attempts`` drafts failed."""
    tools = sorted({t for d in fleet if d.eligible for t in d.tools})
    schema = draft_schema(tools or None, subgoals=subgoals)
    rejected: list[str] = []
    tokens = 0
    for n in range(1, attempts + 1):
        ask = prompt(goal, tools, limits, [*feedback, *rejected[-2:]], depth)
        completion = await complete(ask, schema, max_tokens)
        tokens += completion.prompt_tokens + completion.completion_tokens
        try:
            plan = _no_subgoals(validate(parse_draft(completion.text), fleet, limits), subgoals)
        except PlanRejected as exc:
            rejected.append(exc.reason)
            continue
        return Planned(plan, n, rejected, tokens)
    raise PlanRejected(f"{attempts} drafts rejected: " + " | ".join(rejected))


MAX_SYNTHESIS = 2000
"""Characters of a synthesised answer, at most."""


def synthesis_schema(max_tokens: int) -> dict[str, object]:
    """``{"answer": "..."}`` with the answer short enough that the JSON closes within ``max_tokens``
    (a token is at least one character; 100 left for the braces, quotes and the whitespace the JSON
    grammar allows between them): a model that rambles is stopped by the grammar, not cut off
    mid-string by the token limit."""
    longest = max(16, min(MAX_SYNTHESIS, max_tokens - 100))
    return {
        "type": "object",
        "properties": {"answer": {"type": "string", "minLength": 1, "maxLength": longest}},
        "required": ["answer"],
        "additionalProperties": False,
    }


LOOP = re.compile(r"(.{1,8}?)\1{8,}", re.S)
"""A unit of up to 8 characters written 9 times in a row or more: a small model stuck in a loop
(greedy decoding: Gemma 3 270M given thin results wrote "a1111..." to the length limit)."""


SYNTHESIS_EXAMPLE = (
    '"Pump 1 runs at 1200 rpm." and "Pump 2 is stopped."',
    "Pump 1 runs at 1200 rpm and pump 2 is stopped.",
)
"""Results and their combined answer, for the prompt: combining without concluding anything (an
example that compared its results made Gemma 3 270M compare results that had nothing to compare)."""


def synthesis_prompt(goal: str, results: Sequence[tuple[str, str]], per_result: int = 1500) -> str:
    """The synthesis prompt: the goal and the results of the plan's last tasks (each cut to
    ``per_result`` characters)."""
    lines = [
        "Agents on several devices each did one part of a goal. "
        "Combine their results into the goal's answer.",
        "Use only what the results say, and mention every result. Do not add anything else.",
        f"Example: results {SYNTHESIS_EXAMPLE[0]} -> {json.dumps({'answer': SYNTHESIS_EXAMPLE[1]})}",
        f"Goal: {goal}",
        "Results:",
        *(f"- {tid}: {answer[:per_result]}" for tid, answer in results),
        "Answer (JSON):",
    ]
    return "\n".join(lines)


async def synthesise_with_model(
    complete: Complete, goal: str, results: Sequence[tuple[str, str]], *, max_tokens: int = 384
) -> tuple[str, int]:
    """The goal's answer written by the model from ``results`` (task id, answer), and the tokens it
    cost. ``SynthesisFailed`` when the model's answer is not the schema's JSON or is blank."""
    completion = await complete(synthesis_prompt(goal, results), synthesis_schema(max_tokens), max_tokens)
    tokens = completion.prompt_tokens + completion.completion_tokens
    try:
        answer = json.loads(completion.text)["answer"]
    except (ValueError, KeyError, TypeError) as exc:
        raise SynthesisFailed(f"not the answer's JSON ({type(exc).__name__})", tokens) from None
    if not isinstance(answer, str) or not answer.strip():
        raise SynthesisFailed("the answer is blank", tokens)
    if looping := LOOP.search(answer):
        raise SynthesisFailed(f"the answer repeats {looping.group(1)!r} over and over", tokens)
    return answer.strip()[:MAX_SYNTHESIS], tokens


def plan_given(
    plan: goals_pb2.PlanDraft, fleet: Sequence[DeviceView], limits: Limits, *, subgoals: bool = True
) -> Planned:
    """An operator's plan (the draft format), checked as a model's would be."""
    return Planned(_no_subgoals(validate(draft_of(plan), fleet, limits), subgoals), 1)


def _no_subgoals(plan: Plan, allowed: bool) -> Plan:
    """``plan``, unless it has sub-goals where the goal depth limit allows none."""
    deep = [t.id for t in plan.tasks if t.subgoal]
    if deep and not allowed:
        raise PlanRejected(f"tasks {', '.join(deep)} are sub-goals, but the goal depth limit is reached")
    return plan
