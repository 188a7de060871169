"""Comparing two evaluations of the same suite: what changed per tier and per goal, and whether the
change is larger than chance (paired: the same goal and repeat under A and under B)."""

from __future__ import annotations

from dataclasses import dataclass

from .report import Report
from .stats import PairedTest, mcnemar
from .suite import SuiteError


@dataclass(frozen=True, slots=True)
class Comparison:
    a: Report
    b: Report
    test: PairedTest
    pairs: dict[tuple[str, int], tuple[bool, bool]]

    def changed_goals(self) -> list[str]:
        lines = []
        for (goal, repeat), (was, now) in sorted(self.pairs.items()):
            if was != now:
                lines.append(f"{'+' if now else '-'} {goal} #{repeat}: {'gained' if now else 'lost'}")
        return lines


def compare(a: Report, b: Report) -> Comparison:
    """Pair the runs both reports have; SuiteError when they are of different suites or revisions."""
    if (a.suite, a.revision) != (b.suite, b.revision):
        raise SuiteError(
            f"reports of different suites ({a.suite} r{a.revision} vs {b.suite} r{b.revision}) are not "
            "comparable",
            path=b.suite,
        )
    runs_a = {(r.goal_id, r.repeat): r.success for r in a.runs}
    runs_b = {(r.goal_id, r.repeat): r.success for r in b.runs}
    pairs = {k: (runs_a[k], runs_b[k]) for k in runs_a if k in runs_b}
    return Comparison(a, b, mcnemar(list(pairs.values())), pairs)


def _pp(x: float) -> str:
    return f"{x * 100:+.0f} pp"


def comparison_rows(c: Comparison) -> list[list[str]]:
    """(what, A, B, change) rows: the model and settings, each tier, all, steps, tokens, time."""
    rows = [
        ["model", c.a.model, c.b.model, ""],
        ["prompt", c.a.prompt_format, c.b.prompt_format, ""],
        ["settings", str(c.a.settings or "defaults"), str(c.b.settings or "defaults"), ""],
    ]
    for tier in [*dict.fromkeys([*c.a.tiers(), *c.b.tiers()]), None]:
        ra, rb = c.a.rate(tier), c.b.rate(tier)
        rows.append([tier or "all", str(ra), str(rb), _pp(rb.value - ra.value)])
    for attr, unit in (("steps", ""), ("tokens", ""), ("wall_s", " s")):
        va, vb = c.a.mean(attr), c.b.mean(attr)
        rows.append([f"mean {attr}", f"{va:.1f}{unit}", f"{vb:.1f}{unit}", f"{vb - va:+.1f}{unit}"])
    rows.append(["finished but wrong", str(c.a.false_finishes()), str(c.b.false_finishes()), ""])
    return rows
