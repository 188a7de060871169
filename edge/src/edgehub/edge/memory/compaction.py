"""Compaction: older turns folded into a running summary by the agent's own model.

Written for small base models: the prompt is a plain document to continue, and the output is
grammar-constrained to ``{"summary": "..."}``. If the model still fails (cut at max_tokens, empty),
an extractive summary is used instead: compaction must never stop an agent.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from edgehub.llm import Brain
from edgehub.protocol.v1 import agent_pb2

SCHEMA = {
    "type": "object",
    "properties": {"summary": {"type": "string", "minLength": 1, "maxLength": 600}},
    "required": ["summary"],
    "additionalProperties": False,
}
MAX_SUMMARY_CHARS = 1200


def render_turns(turns: Sequence[agent_pb2.Turn]) -> str:
    return "".join(f"Step {t.step + 1} {t.role}: {t.text}\n" for t in turns)


def extractive_summary(previous: str, turns: Sequence[agent_pb2.Turn]) -> str:
    """Deterministic fallback: the previous summary plus one short line per folded turn."""
    lines = [previous] if previous else []
    lines += [f"step {t.step + 1} {t.role}: {' '.join(t.text.split())[:80]}" for t in turns]
    return "; ".join(lines)[-MAX_SUMMARY_CHARS:]


class Compactor:
    def __init__(self, brain: Brain) -> None:
        self.brain = brain

    def prompt(self, goal: str, previous: str, turns: Sequence[agent_pb2.Turn]) -> str:
        return (
            "# Work log summary\n"
            "Keep every fact needed to finish the goal: file names, values, results, errors.\n"
            f"Goal: {goal}\n"
            f"Summary so far: {previous or '(none)'}\n"
            f"New events:\n{render_turns(turns)}"
            "Updated summary as JSON: "
        )

    def summarize(self, goal: str, previous: str, turns: Sequence[agent_pb2.Turn], *, max_tokens: int) -> str:
        """Blocking (uses the brain): call through the daemon's model gate."""
        completion = self.brain.complete(
            self.prompt(goal, previous, turns), json_schema=SCHEMA, max_tokens=max_tokens
        )
        try:
            summary = json.loads(completion.text)["summary"].strip()
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            summary = ""
        return summary[:MAX_SUMMARY_CHARS] if summary else extractive_summary(previous, turns)
