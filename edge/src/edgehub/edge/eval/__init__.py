"""The evaluation suite: goals in tiers with checks of their side effects (``suite``, ``checks``), a
runner on the real edge daemon (``runner``), reports with intervals and their comparison (``report``,
``stats``, ``compare``) and the ``edgehub eval`` commands (``cli``). docs/eval.md."""

from .checks import CATEGORIES, Outcome, Verdict, judge
from .compare import Comparison, compare
from .report import GoalRun, Report
from .runner import EvalRunner, RunOptions
from .stats import PairedTest, Rate, mcnemar, wilson
from .suite import TIERS, Check, Goal, Suite, SuiteError, load_suite

__all__ = [
    "CATEGORIES",
    "TIERS",
    "Check",
    "Comparison",
    "EvalRunner",
    "Goal",
    "GoalRun",
    "Outcome",
    "PairedTest",
    "Rate",
    "Report",
    "RunOptions",
    "Suite",
    "SuiteError",
    "Verdict",
    "compare",
    "judge",
    "load_suite",
    "mcnemar",
    "wilson",
]
