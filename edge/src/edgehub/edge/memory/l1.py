"""L1: the token-budgeted active window of recent turns.

The window is every turn after the summary; when it would outgrow its budget, the oldest steps are
folded into the summary (compaction) rather than silently dropped, so nothing the agent saw is lost.

A step's turns (its action and its observation) enter or leave the window together: a model shown an
observation without the action that caused it (or the reverse) is confused, small models most of all.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby

from edgehub.protocol.v1 import agent_pb2

KEEP_LAST_STEPS = 2


def _by_step(turns: Sequence[agent_pb2.Turn]) -> list[tuple[int, int]]:
    """(step, tokens) per step, oldest first."""
    return [(step, sum(t.tokens for t in group)) for step, group in groupby(turns, key=lambda t: t.step)]


def steps_to_compact(turns: Sequence[agent_pb2.Turn], budget_tokens: int, keep: int = KEEP_LAST_STEPS) -> int:
    """Step number up to which (exclusive) turns must fold into the summary; 0 when they all fit.

    Folds the oldest steps until the rest fits ``budget_tokens``, but always keeps the last ``keep``
    steps verbatim (if even those do not fit, the caller's observation limit is too generous).
    """
    steps = _by_step(turns)
    total = sum(tokens for _, tokens in steps)
    if total <= budget_tokens:
        return 0
    fold_until = 0
    for i, (step, tokens) in enumerate(steps):
        if total <= budget_tokens or len(steps) - i <= keep:
            break
        total -= tokens
        fold_until = step + 1
    return fold_until
