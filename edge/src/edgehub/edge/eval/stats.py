"""The few statistics an evaluation needs: a rate with its confidence interval, and whether two runs
of the same goals differ by more than chance.

Written out rather than imported (scipy would be a 40 MB dependency for twenty lines): the Wilson score
interval for a binomial rate, and the exact McNemar test for paired successes (the same goals run under
two configurations), whose p-value is a two-sided binomial test on the runs that changed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054


@dataclass(frozen=True, slots=True)
class Rate:
    """Successes out of runs, with a 95% Wilson interval."""

    successes: int
    runs: int

    @property
    def value(self) -> float:
        return self.successes / self.runs if self.runs else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.successes, self.runs)

    def __str__(self) -> str:
        low, high = self.interval
        return f"{self.value:.0%} ({self.successes}/{self.runs}, 95% CI {low:.0%}-{high:.0%})"


def wilson(successes: int, runs: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``successes``/``runs`` (good for small n and rates near 0 or 1)."""
    if runs <= 0:
        return 0.0, 1.0
    p = successes / runs
    denom = 1 + z * z / runs
    centre = (p + z * z / (2 * runs)) / denom
    half = z * math.sqrt(p * (1 - p) / runs + z * z / (4 * runs * runs)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def binomial_two_sided(k: int, n: int) -> float:
    """P(a result at least as extreme as ``k`` of ``n``) for a fair coin, two-sided."""
    if n == 0:
        return 1.0
    low = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(low + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass(frozen=True, slots=True)
class PairedTest:
    """McNemar's exact test on paired runs: ``gained`` failed in A and succeeded in B, ``lost`` the
    reverse; runs that agree carry no information about the difference."""

    gained: int
    lost: int
    pairs: int

    @property
    def p_value(self) -> float:
        return binomial_two_sided(self.gained, self.gained + self.lost)

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p_value < alpha


def mcnemar(pairs: list[tuple[bool, bool]]) -> PairedTest:
    """The paired test of (success in A, success in B) per run."""
    gained = sum(1 for a, b in pairs if not a and b)
    lost = sum(1 for a, b in pairs if a and not b)
    return PairedTest(gained, lost, len(pairs))
