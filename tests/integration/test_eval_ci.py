"""The CI-sized evaluation: the core suite's CI subset on the default model through the real daemon
(real model, SQLite, sandbox, policy), judged by side effects. A change that makes agents worse at their
goals fails here.

FLOOR is set just under the rate measured when it was last changed (docs/benchmarks.md, bench/eval);
greedy decoding makes a run reproducible on one machine, but llama.cpp's arithmetic differs slightly
between CPUs, so one goal's worth of slack is allowed. Raise it when the agents get better, never lower
it to make a change pass. Runtime: about 3-4 minutes on 2 cores (11 agent runs); it is one test because
the goals share one loaded model and the floor is about the subset as a whole.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgehub.edge.eval.cli import run_suite
from edgehub.edge.eval.runner import RunOptions
from edgehub.edge.eval.suite import load_suite

pytestmark = pytest.mark.model

FLOOR = 0.8
"""Share of the CI subset's goals that must succeed: measured 9 of 10 on the default model, Qwen2.5 Coder
0.5B Instruct, with every lever on (all but order-quantity; docs/benchmarks.md), so one goal of slack.
(Gemma 3 270M, the default before, measured 6 and then 7 of 10.)"""


@pytest.mark.timeout(900)
def test_the_ci_subset_reaches_its_floor_and_no_failed_check_counts_as_success(tmp_path: Path) -> None:
    suite = load_suite("core")
    goals = suite.select(ci_only=True)
    report = run_suite(suite, goals, RunOptions(workdir=tmp_path, label="ci"), progress=False)
    lines = [f"{r.goal_id}: {'ok' if r.success else r.category} {r.tools}" for r in report.runs]
    assert len(report.runs) == len(goals)
    for run in report.runs:
        assert run.success == all(v.passed for v in run.verdicts), run
    assert report.rate().value >= FLOOR, "\n".join(lines)
