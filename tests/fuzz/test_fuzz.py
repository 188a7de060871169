"""The fuzz targets in ``make test``: each runs a small fixed budget (``RUNS`` inputs from a fixed
seed, after replaying the committed corpus; at most ``CAP_S`` seconds) and must end without a crash:
no exception the target does not declare, no state changed by a rejected input (the properties are in
each target's docstring). ``make bench B=fuzz`` runs them for longer."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.budget import TARGETS, crash_report, run

RUNS = {"events": 6000, "twins": 3000, "api": 4000, "commands": 4000}
"""About five seconds each on the 2-core machine (docs/security.md, Fuzzing)."""
CAP_S = 20


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target_survives_its_budget_without_a_crash(target: str, tmp_path: Path) -> None:
    result = run(
        target, tmp_path / "found", tmp_path / "crashes", f"-runs={RUNS[target]}", "-seed=1",
        f"-max_total_time={CAP_S}", timeout_s=120,
    )  # fmt: skip
    assert not result.crashed, crash_report(result)
    assert result.executions >= min(RUNS[target], 1000), result.output[-2000:]
