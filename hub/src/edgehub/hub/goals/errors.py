"""Errors of the planner (under the hub's root, ``HubError``).

HubError
└── PlanningError      root of the planner's errors
    ├── PlanRejected   the model's plan is unusable and nothing of it may be dispatched; ``reason`` says
    │                  why in words an operator (and a re-prompted model) can act on
    └── SynthesisFailed  the model's answer for a finished goal is unusable; the goal keeps its tasks'
                         answers instead
"""

from __future__ import annotations

from edgehub.protocol.errors import ErrorCode

from ..errors import HubError


class PlanningError(HubError):
    """Root of the planner's errors."""

    code = ErrorCode.FAILED_PRECONDITION


class PlanRejected(PlanningError):
    """A draft plan that failed parsing or validation. Asking the model again may give a better one,
    but the same draft never passes, so it is not ``retryable``."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"plan rejected: {reason}")
        self.reason = reason


class SynthesisFailed(PlanningError):
    """The model's synthesis of a goal's answer is not the schema's JSON, or is blank."""

    def __init__(self, reason: str, tokens: int = 0) -> None:
        super().__init__(f"synthesis failed: {reason}")
        self.reason = reason
        self.tokens = tokens
        """What the failed call cost (the goal's planner tokens count it)."""
