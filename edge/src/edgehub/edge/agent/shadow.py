"""The loop's side of shadow reasoning (parity-gated rollouts, ``edgehub.edge.shadow``): what the loop
hands over after each step it thought for, and the one method it calls.

The hand-over happens after the step is committed and never waits: what the shadow model does with
it cannot change the step, delay its commit or run anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from .actions import Proposal


@dataclass(frozen=True, slots=True)
class ModelCall:
    """One think call exactly as the running model got it."""

    prompt: str
    json_schema: dict[str, Any] | None
    """The grammar's JSON schema (the tools this step may call)."""
    max_tokens: int
    special: bool
    """Whether the prompt's chat-template tokens are parsed as special tokens."""


@dataclass(frozen=True, slots=True)
class ShadowAsk:
    """A step the running model decided, for the shadow model to propose an action for."""

    agent_id: str
    epoch: int
    step: int
    call: ModelCall
    proposal: Proposal
    """What the running model proposed (and the agent executed)."""
    current_model: str
    """The running model's fingerprint."""


class ShadowSink(Protocol):
    """Takes the loop's steps for the shadow model (``edgehub.edge.shadow.ShadowReasoner``)."""

    def offer(self, ask: ShadowAsk) -> None:
        """Take ``ask`` or drop it (nothing in shadow, or too busy); never blocks, never raises."""
        ...
