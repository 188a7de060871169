"""A scripted hub model for unit tests of the loop's escalation logic (``agent.base.Escalator``).

Never used by a daemon: the real one is ``escalation.EscalationClient`` over NATS.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..agent.base import HubAnswer


@dataclass(frozen=True, slots=True)
class Asked:
    """One request the fake received."""

    agent_id: str
    step: int
    reason: str
    prompt: str
    schema: Mapping[str, object] | None
    max_tokens: int
    confidence: float | None


class FakeEscalator:
    """Answers escalations in order from ``script``: an action's text (answered by the "hub" with
    ``tokens`` tokens) or ``HubAnswer``, or a str starting ``"!"`` for a failure (its reason)."""

    def __init__(self, script: list[str | HubAnswer], *, tokens: int = 100) -> None:
        self.script = list(script)
        self.tokens = tokens
        self.asked: list[Asked] = []

    async def ask(
        self,
        *,
        agent_id: str,
        step: int,
        reason: str,
        prompt: str,
        schema: Mapping[str, object] | None,
        max_tokens: int,
        confidence: float | None,
    ) -> HubAnswer | str:
        self.asked.append(Asked(agent_id, step, reason, prompt, schema, max_tokens, confidence))
        if not self.script:
            raise RuntimeError("FakeEscalator script exhausted")
        item = self.script.pop(0)
        if isinstance(item, HubAnswer):
            return item
        if item.startswith("!"):
            return item[1:]
        return HubAnswer(item, self.tokens, "fake-hub", "hub", 1.0)
