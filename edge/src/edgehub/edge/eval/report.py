"""An evaluation's results: one record per run, the summary by tier and by goal, and its JSON file.

The JSON file (``edgehub eval run --json``, read back by ``edgehub eval compare``) carries
``format`` (this module's version of it) and the suite's name and revision: reports are compared only
when both are the same.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..jsontypes import JsonObject
from .checks import CATEGORIES, Verdict
from .stats import Rate
from .suite import TIERS, SuiteError

FORMAT = 1


@dataclass(frozen=True, slots=True)
class GoalRun:
    """One run of one goal."""

    goal_id: str
    tier: str
    repeat: int
    success: bool
    """Every check passed (nothing else counts)."""
    category: str
    """Why it failed (checks.CATEGORIES); '' on success."""
    status: str
    """The agent's final status (finished, failed, awaiting_approval ...)."""
    failure_reason: str
    answer: str
    verified: str
    """What the platform's finish check said about the deliverables (``verified``, ``unverified``,
    ``none``: nothing to check, ``off``, or '' when the agent did not finish)."""
    steps: int
    tokens: int
    """Prompt tokens evaluated + tokens generated."""
    wall_s: float
    tools: list[str]
    """The tools the agent called, in order (a failed call is marked with ``!``)."""
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status == "finished"


@dataclass(frozen=True, slots=True)
class Report:
    """Every run of one evaluation, and what it ran on."""

    suite: str
    revision: int
    model: str
    """The GGUF file's name."""
    prompt_format: str
    """``chat`` (the model's own template) or ``transcript``."""
    settings: JsonObject
    """Configuration that differs from the defaults (the levers)."""
    machine: str
    runs: list[GoalRun]
    label: str = ""
    commit: str = ""
    format: int = FORMAT

    def rate(self, tier: str | None = None, goal: str | None = None) -> Rate:
        runs = [
            r for r in self.runs if (tier is None or r.tier == tier) and (goal is None or r.goal_id == goal)
        ]
        return Rate(sum(r.success for r in runs), len(runs))

    def tiers(self) -> list[str]:
        present = {r.tier for r in self.runs}
        return [t for t in TIERS if t in present]

    def goals(self) -> list[str]:
        return list(dict.fromkeys(r.goal_id for r in self.runs))

    def categories(self) -> Counter[str]:
        return Counter(r.category for r in self.runs if not r.success)

    def false_finishes(self) -> int:
        """Runs that ended FINISHED with a check failing: what ``FINISHED`` alone would have miscounted."""
        return sum(1 for r in self.runs if r.finished and not r.success)

    def verified_but_wrong(self) -> int:
        """Runs the finish check called verified whose checks failed (the finish check's false passes)."""
        return sum(1 for r in self.runs if r.verified == "verified" and not r.success)

    def mean(self, attr: str, *, successes_only: bool = False) -> float:
        values = [float(getattr(r, attr)) for r in self.runs if r.success or not successes_only]
        return statistics.fmean(values) if values else 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, ensure_ascii=False)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() + "\n")

    @classmethod
    def from_json(cls, text: str, *, where: str) -> Report:
        """A report written by ``to_json``; SuiteError when the text is not one."""
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT:
                raise SuiteError(
                    f"report format {data.get('format')!r} is not supported ({FORMAT})", path=where
                )
            runs = [
                GoalRun(**{**r, "verdicts": [Verdict(**v) for v in r["verdicts"]]}) for r in data.pop("runs")
            ]
            return cls(**data, runs=runs)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise SuiteError(f"not an evaluation report ({type(exc).__name__}: {exc})", path=where) from None

    @classmethod
    def load(cls, path: Path) -> Report:
        try:
            text = path.read_text()
        except OSError as exc:
            raise SuiteError(f"cannot read it ({exc.strerror})", path=str(path)) from None
        return cls.from_json(text, where=str(path))


def summary_rows(report: Report) -> list[list[str]]:
    """Rows of (tier, success with CI, steps, tokens, seconds per run)."""
    rows = []
    for tier in [*report.tiers(), None]:
        runs = [r for r in report.runs if tier is None or r.tier == tier]
        rows.append(
            [
                tier or "all",
                str(report.rate(tier)),
                f"{statistics.fmean(r.steps for r in runs):.1f}",
                f"{statistics.fmean(r.tokens for r in runs):.0f}",
                f"{statistics.fmean(r.wall_s for r in runs):.1f}",
            ]
        )
    return rows


def goal_rows(report: Report) -> list[list[str]]:
    """Rows of (goal, tier, successes, category counts, tools of the first run)."""
    rows = []
    for goal in report.goals():
        runs = [r for r in report.runs if r.goal_id == goal]
        failed = Counter(r.category for r in runs if not r.success)
        why = ", ".join(f"{c} x{n}" if n > 1 else c for c, n in failed.items())
        detail = next((v.detail for r in runs for v in r.verdicts if not v.passed), "")
        rows.append(
            [
                goal,
                runs[0].tier,
                f"{sum(r.success for r in runs)}/{len(runs)}",
                why,
                " ".join(runs[0].tools)[:60],
                detail[:70],
            ]
        )
    return rows


def category_row(report: Report) -> str:
    counts = report.categories()
    return ", ".join(f"{c} {counts[c]}" for c in CATEGORIES if counts[c]) or "none"
