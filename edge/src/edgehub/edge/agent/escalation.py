"""When a step is asked of the hub's model, and what its answer does to the step.

A step is escalated (``[escalation] enabled``) for the first of these reasons that holds:

1. ``policy``: the policy rule deciding the device model's call says ``escalate = true`` (this tool,
   or these arguments, need the hub's model);
2. ``stuck``: the stuck monitor warned the agent at the previous step (``on_stuck``), before it would
   stop it;
3. ``confidence``: the device model's confidence (``Completion.confidence``) is below
   ``min_confidence``, and its grammar offered more than one tool (a guided step has nothing to choose).

It is not when the hub's tokens for this agent would then exceed ``max_tokens_share`` of its token
budget (estimated as the prompt's tokens + the action's ``max_tokens``). The hub's answer, when it is a
valid action, replaces the device model's proposal: it goes through the stuck monitor, policy and the
tool gateway like any action. With no answer (no hub, a timeout, the hub's error, an answer that is not
an action) the device model's proposal stands. Either way the step's mind-log event says what happened.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edgehub.llm import Completion
from edgehub.protocol.v1 import agent_pb2

from ..config import EscalationConfig
from ..jsontypes import JsonObject
from .actions import Proposal, parse_action
from .base import Escalator

NeedsHub = Callable[[str, JsonObject], bool]
"""Whether policy says the hub's model must choose this call (tool, arguments)."""


@dataclass(frozen=True, slots=True)
class Thought:
    """One think call: what the model was asked and what it answered."""

    prompt: str
    schema: JsonObject
    completion: Completion


@dataclass(frozen=True, slots=True)
class Escalated:
    """What escalation did to a step."""

    proposal: Proposal
    """The step's action: the hub's, or the device model's when there was no usable answer."""
    note: str
    """For the step's mind-log event."""
    tokens: int = 0
    """The hub's tokens to count against the budget."""
    reason: str = ""
    outcome: str = ""
    """``answered``, ``failed`` or ``over_share``."""


def choices(schema: JsonObject) -> int:
    """Tools the action's grammar lets the model choose between."""
    branches = schema.get("anyOf")
    return len(branches) if isinstance(branches, list) else 1


def reason_for(
    cfg: EscalationConfig,
    *,
    confidence: float | None,
    choices: int,
    stuck_warned: bool,
    policy_needs_hub: bool,
) -> str | None:
    """Why this step goes to the hub's model (``policy``, ``stuck``, ``confidence``), or None."""
    if not cfg.enabled:
        return None
    if policy_needs_hub:
        return "policy"
    if cfg.on_stuck and stuck_warned:
        return "stuck"
    if confidence is not None and choices > 1 and confidence < cfg.min_confidence:
        return "confidence"
    return None


def within_share(cfg: EscalationConfig, usage: agent_pb2.Usage, budget_tokens: float, estimate: int) -> bool:
    """The hub's tokens for this agent stay within ``max_tokens_share`` of its budget with ``estimate``."""
    return usage.escalated_tokens + estimate <= cfg.max_tokens_share * budget_tokens


class Escalation:
    """Decides and performs a step's escalation (see the module docstring)."""

    def __init__(
        self,
        cfg: EscalationConfig,
        escalator: Escalator,
        *,
        max_tokens: int,
        needs_hub: NeedsHub | None = None,
        on_outcome: Callable[[str, str], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.escalator = escalator
        self.max_tokens = max_tokens
        """Tokens the hub's model may write for an action (the device's ``max_action_tokens``)."""
        self.needs_hub = needs_hub or (lambda tool, args: False)
        self.on_outcome = on_outcome
        """Told (reason, outcome) of every escalation decided (metrics)."""

    def reason(self, state: agent_pb2.AgentState, thought: Thought, proposal: Proposal) -> str | None:
        """Why this step goes to the hub's model, or None (``reason_for``)."""
        return reason_for(
            self.cfg,
            confidence=thought.completion.confidence,
            choices=choices(thought.schema),
            stuck_warned=bool(state.guard.warning),
            policy_needs_hub=proposal.ok and self.needs_hub(proposal.tool, proposal.args),
        )

    async def step(
        self,
        state: agent_pb2.AgentState,
        thought: Thought,
        proposal: Proposal,
        budget_tokens: float,
        reason: str,
    ) -> Escalated:
        """Escalate the step for ``reason`` (what ``reason()`` gave); ``budget_tokens``: the agent's
        token budget."""
        done = await self._ask(state, thought, proposal, budget_tokens, reason)
        if self.on_outcome is not None:
            self.on_outcome(reason, done.outcome)
        return done

    async def _ask(
        self, state: agent_pb2.AgentState, t: Thought, proposal: Proposal, budget_tokens: float, reason: str
    ) -> Escalated:
        c = t.completion
        why = f"{reason}, confidence {c.confidence:.3f}" if c.confidence is not None else reason
        if not within_share(self.cfg, state.usage, budget_tokens, c.prompt_tokens + self.max_tokens):
            note = f"not escalated ({why}): the hub's share of the token budget would be exceeded"
            return Escalated(proposal, note, reason=reason, outcome="over_share")
        answer = await self.escalator.ask(
            agent_id=state.agent_id, step=state.step, reason=reason, prompt=t.prompt, schema=t.schema,
            max_tokens=self.max_tokens, confidence=c.confidence,
        )  # fmt: skip
        if isinstance(answer, str):
            note = f"escalation failed ({why}): {answer}; the device's own action stands"
            return Escalated(proposal, note, reason=reason, outcome="failed")
        hub = parse_action(answer.text)
        if not hub.ok:
            note = (f"escalation failed ({why}): the hub's answer is no action ({hub.error}); "
                    "the device's own action stands")  # fmt: skip
            return Escalated(proposal, note, answer.tokens, reason, "failed")
        mine = proposal.tool if proposal.ok else "no valid action"
        note = (
            f"escalated ({why}): the hub's model {answer.model} chose {hub.tool} "
            f"({answer.source}, {answer.latency_ms:.0f} ms); the device's model had chosen {mine}"
        )
        return Escalated(hub, note, answer.tokens, reason, "answered")
