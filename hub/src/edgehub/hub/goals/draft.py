"""What the planner model writes: a draft plan, as pydantic models, its JSON schema and its parser.

The model's answer is grammar-constrained to ``draft_schema()`` (``Brain.complete(json_schema=...)``,
as the dreamer's facts and the edge's actions), so its *shape* is right whenever the answer was not
cut short; ``parse_draft`` still checks everything, because the grammar carries no length bounds (the
brain drops them, see ``edgehub.llm.llama.grammar_schema``), no integer ranges (llama.cpp's converter
ignores ``minimum``/``maximum``) and no uniqueness. What a draft *means* (ids that exist, no cycles,
tools the fleet has, budgets) is checked by ``validate``.

The schema uses only keywords llama.cpp's converter understands: ``type``, ``properties``,
``required``, ``additionalProperties``, ``items``, ``minItems``/``maxItems``,
``minLength``/``maxLength``, ``pattern`` and ``enum``.
"""

from __future__ import annotations

from typing import Annotated, Any

from google.protobuf.json_format import MessageToDict
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from edgehub.protocol.v1 import goals_pb2

from .errors import PlanRejected

MAX_TASKS = 32
"""Tasks in one draft. ``Limits.max_tasks`` is the operator's (smaller) limit; this one only stops a
model that loops before validation has to look at its output."""
MAX_GOAL = 500
"""Characters of one task's goal: an instruction for one edge agent, not a document."""
MAX_ID = 32
MAX_TOOL = 64
MAX_LIST = 16
"""Entries in one task's ``needs`` and ``tools``."""
MAX_LABELS = 8
MAX_TOKENS = 1_000_000
"""Sanity bound of one estimate; the budget limits (``Limits``) are far lower."""
MAX_TEXT = 64_000
"""Characters of a whole answer; longer text is rejected before it is parsed."""
ID_PATTERN = rf"^[a-z0-9][a-z0-9_-]{{0,{MAX_ID - 1}}}$"

Slug = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
ToolName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TOOL)]
Label = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class TaskDraft(BaseModel):
    """One sub-task as the model wrote it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Slug
    """Short slug the other tasks' ``needs`` refer to (``inspect-line-3``)."""
    goal: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_GOAL)]
    """What the edge agent running the task is asked to do."""
    needs: list[Slug] = Field(default_factory=list, max_length=MAX_LIST)
    """Ids of the tasks whose results this task takes as inputs (the DAG's edges)."""
    tools: list[ToolName] = Field(default_factory=list, max_length=MAX_LIST)
    """Tools the device running it must offer (``run_command``, ``read_file``, ...)."""
    estimate_tokens: int = Field(ge=1, le=MAX_TOKENS)
    """The model's guess of the tokens the task will use, checked against the budgets."""
    labels: dict[Label, Label] = Field(default_factory=dict, max_length=MAX_LABELS)
    """Affinity: a device must carry all these labels (``site: hall-5``)."""
    avoid: dict[Label, Label] = Field(default_factory=dict, max_length=MAX_LABELS)
    """Anti-affinity: a device carrying any of these labels is not used."""
    subgoal: bool = False
    """The task is itself a goal for a sub-planner (a plan of its own, up to the hub's goal depth
    limit), not one agent's work."""


class PlanDraft(BaseModel):
    """The model's whole answer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tasks: list[TaskDraft] = Field(min_length=1, max_length=MAX_TASKS)


def draft_schema(
    tools: list[str] | None = None, *, labels: bool = False, subgoals: bool = False
) -> dict[str, Any]:
    """The JSON schema the planner's answer is constrained to. With ``tools`` (the fleet's tool names),
    a task can only name those, so the grammar rules out unknown tools; without, any name up to
    ``MAX_TOOL`` characters (``validate`` then repairs or rejects it). ``labels`` lets the model
    write ``labels``/``avoid`` selectors; off by default, since a model that does not know the
    fleet's labels invents ones no device carries (selectors given with the goal are better).
    ``subgoals`` lets it mark a task as a goal for a sub-planner (off where the depth limit is reached)."""
    slug = {"type": "string", "pattern": ID_PATTERN}
    tool: dict[str, Any] = (
        {"type": "string", "enum": sorted(set(tools))}
        if tools
        else {"type": "string", "minLength": 1, "maxLength": MAX_TOOL}
    )
    selector = {
        "type": "object",
        "additionalProperties": {"type": "string", "minLength": 1, "maxLength": 64},
    }
    task = {
        "type": "object",
        "properties": {
            "id": slug,
            "goal": {"type": "string", "minLength": 1, "maxLength": MAX_GOAL},
            "needs": {"type": "array", "items": slug, "maxItems": MAX_LIST},
            "tools": {"type": "array", "items": tool, "maxItems": MAX_LIST},
            "estimate_tokens": {"type": "integer"},
            **({"labels": selector, "avoid": selector} if labels else {}),
            **({"subgoal": {"type": "boolean"}} if subgoals else {}),
        },
        "required": ["id", "goal", "needs", "tools", "estimate_tokens"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {"tasks": {"type": "array", "items": task, "minItems": 1, "maxItems": MAX_TASKS}},
        "required": ["tasks"],
        "additionalProperties": False,
    }


def parse_draft(text: str) -> PlanDraft:
    """The draft in the model's answer ``text``; ``PlanRejected`` naming what is wrong (bad JSON, a
    missing or extra field, a bound exceeded) otherwise. Strict: ``"12"`` is not an integer."""
    if len(text) > MAX_TEXT:
        raise PlanRejected(f"the answer is {len(text)} characters long; at most {MAX_TEXT} are read")
    try:
        return PlanDraft.model_validate_json(text, strict=True)
    except ValidationError as exc:
        raise PlanRejected(_reason(exc, text)) from None


def draft_of(plan: goals_pb2.PlanDraft) -> PlanDraft:
    """The draft in an operator's ``PlanDraft`` message (``SubmitGoal``), checked as a model's answer
    is; ``PlanRejected`` naming what is wrong otherwise (every field is present in the message, so an
    empty id or an estimate of 0 is named for its bound, not as missing)."""
    fields = MessageToDict(plan, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    try:
        return PlanDraft.model_validate(fields, strict=True)
    except ValidationError as exc:
        raise PlanRejected(_reason(exc, "")) from None


def _reason(exc: ValidationError, text: str) -> str:
    """The first few errors as ``tasks.1.goal: String should have at most 500 characters``. The
    model's input is never echoed in full: it may be huge or hostile."""
    errors = exc.errors(include_url=False, include_input=False)
    if errors and errors[0]["type"] == "json_invalid":
        return f"not valid JSON ({errors[0]['msg']}): {text[:80]!r}"
    shown = [f"{'.'.join(str(p) for p in e['loc']) or 'answer'}: {e['msg']}" for e in errors[:3]]
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(shown) + more
