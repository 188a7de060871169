"""Turning the model's output into a proposal the platform can judge.

The model's output is hostile until proven otherwise: grammar-constrained decoding makes valid JSON
likely, not certain (max_tokens can cut it, a plugin tool may widen the schema). Anything that does not
parse becomes an ``invalid_action`` observation for the model, never an exception in the loop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..jsontypes import JsonObject

MAX_ACTION_CHARS = 16_384
MAX_PLAN_ITEMS = 8
MAX_PLAN_ITEM_CHARS = 160


@dataclass(frozen=True, slots=True)
class Proposal:
    """What the model proposed in one step."""

    raw: str
    """The model's text exactly as generated (kept verbatim so the prompt prefix stays reusable)."""
    thought: str = ""
    tool: str = ""
    args: JsonObject = field(default_factory=dict)
    error: str = ""
    """Why the output is not a usable action (empty when it is)."""
    plan: tuple[str, ...] = ()
    """The step plan written with this action (empty: none written)."""

    @property
    def ok(self) -> bool:
        return not self.error

    def args_json(self) -> str:
        return json.dumps(self.args, ensure_ascii=False, sort_keys=True)

    def to_json(self) -> str:
        """Serialised for the intent log, so a resumed step replays the same proposal."""
        data = {"raw": self.raw, "thought": self.thought, "tool": self.tool, "args": self.args}
        if self.plan:
            data["plan"] = list(self.plan)
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> Proposal:
        data = json.loads(text)
        plan = tuple(data.get("plan", ()))  # absent in proposals recorded before plans existed
        return cls(raw=data["raw"], thought=data["thought"], tool=data["tool"], args=data["args"], plan=plan)


def _plan(value: object) -> tuple[str, ...] | None:
    """A plan as written (a list of short strings), bounded; None when it is not one."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        return None
    items = [" ".join(item.split())[:MAX_PLAN_ITEM_CHARS] for item in value[:MAX_PLAN_ITEMS]]
    return tuple(item for item in items if item)


def parse_action(raw: str) -> Proposal:
    """Parse ``{"plan"?: [str], "thought": str, "tool": str, "args": object}``; never raises."""
    if len(raw) > MAX_ACTION_CHARS:
        return Proposal(raw=raw[:MAX_ACTION_CHARS], error=f"action longer than {MAX_ACTION_CHARS} characters")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as exc:
        return Proposal(raw=raw, error=f"action is not valid JSON ({exc.__class__.__name__}: {exc})")
    if not isinstance(data, dict):
        return Proposal(raw=raw, error="action must be a JSON object")
    thought, tool, args = data.get("thought", ""), data.get("tool"), data.get("args", {})
    if not isinstance(tool, str) or not tool:
        return Proposal(raw=raw, error='action has no "tool" name')
    if not isinstance(thought, str):
        return Proposal(raw=raw, error='"thought" must be a string')
    if not isinstance(args, dict):
        return Proposal(raw=raw, thought=thought, tool=tool, error='"args" must be a JSON object')
    plan = _plan(data.get("plan", []))
    if plan is None:
        return Proposal(raw=raw, thought=thought, tool=tool, error='"plan" must be a list of strings')
    return Proposal(raw=raw, thought=thought, tool=tool, args=args, plan=plan)
