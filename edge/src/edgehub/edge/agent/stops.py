"""Why an agent stopped, as the metrics count it: the words the stuck-loop monitor and the budget check
put first in an agent's failure reason, or in a step warned by the monitor (the text stays for humans;
these keep it countable)."""

from __future__ import annotations

from typing import Literal

WARNING = "warning: "
"""How a step's detail begins when the stuck-loop monitor warned the agent (``Journal``)."""
STUCK = "stuck: "
"""How the stuck-loop monitor's stop reason begins (``safety.stuck``)."""
BUDGET_EXHAUSTED = "budget exhausted"
"""Follows the budget's name in the loop's budget stop: ``"<budget> budget exhausted (...)"``."""
BUDGETS = ("step", "token", "tool-call", "wall-time")
"""The budgets the loop checks (``AgentLoop._exhausted``), the values of the metric's ``budget`` label."""

Cause = Literal["stuck", "budget", "other"]


def stop_cause(reason: str) -> tuple[Cause, str]:
    """(cause, budget) of a failure reason: ``("budget", "token")``, ``("stuck", "")``, ``("other", "")``."""
    if reason.startswith(STUCK):
        return "stuck", ""
    for budget in BUDGETS:
        if reason.startswith(f"{budget} {BUDGET_EXHAUSTED}"):
            return "budget", budget
    return "other", ""
