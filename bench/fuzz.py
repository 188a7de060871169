"""bench/fuzz: the fuzz targets (``tests/fuzz``) for longer than ``make test`` gives them.

Each target (the hub's events, twins and API requests, the edge's commands) runs under atheris
(libFuzzer, coverage-guided) for ``SECONDS`` from the committed corpus, with a seed of its own each
run, so every run explores further. Figures per target: executions, executions per second, coverage
(edges of the instrumented ``edgehub`` code the corpus reaches), inputs found that add coverage, and
crashes (an exception the target does not declare) and broken properties (``AssertionError``: a
rejected input that changed state, another device's record changed, ...), target 0 each; libFuzzer
stops a target at its first one. A crash's input is kept in ``bench/results/fuzz-crashes/`` and its
traceback printed; reproduce it with ``uv run --no-sync python -m tests.fuzz.run TARGET FILE``.

``SECONDS`` (default 120 a target; QUICK=1: 20) can be set in the environment (``FUZZ_SECONDS``).
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.fuzz
from common import QUICK, RESULTS, Check, print_checks, print_table, write_result

from tests.fuzz.budget import TARGETS, crash_report, run

SECONDS = int(os.environ.get("FUZZ_SECONDS", 20 if QUICK else 120))
CRASHES = RESULTS / "fuzz-crashes"


def main() -> None:
    rows, checks, crashed = [], [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for target in TARGETS:
            seed = random.randrange(1, 2**31)
            result = run(
                target, Path(tmp) / target, CRASHES, f"-max_total_time={SECONDS}", f"-seed={seed}",
                timeout_s=SECONDS + 300,
            )  # fmt: skip
            kind = ""
            if result.crashed:
                crashed += 1
                report = crash_report(result)
                kind = "property" if "AssertionError" in report else "exception"
                print(report, file=sys.stderr)
            rows.append([
                target, f"{result.executions:,}", f"{result.execs_per_s:,.0f}", str(result.coverage),
                str(result.new_inputs), f"{result.seconds:.0f}", str(seed), kind or "0",
            ])  # fmt: skip
            checks += [
                Check(f"{target}_executions", result.executions, "inputs", "info", True),
                Check(f"{target}_execs_per_s", round(result.execs_per_s), "1/s", "info", True),
                Check(f"{target}_coverage_edges", result.coverage, "edges", "info", True),
                Check(f"{target}_crashes", int(kind == "exception"), "crashes", "== 0", kind != "exception"),
                Check(
                    f"{target}_state_changes_from_rejected_inputs",
                    int(kind == "property"),
                    "inputs",
                    "== 0",
                    kind != "property",
                ),
            ]
    print_table(
        f"fuzz targets, {SECONDS} s each (atheris/libFuzzer, from tests/fuzz/corpus)",
        ["target", "executions", "exec/s", "coverage", "new inputs", "s", "seed", "crashes"],
        rows,
    )
    print_checks(checks)
    print(f"wrote {write_result('fuzz', checks)}")
    if crashed:
        print(f"{crashed} target(s) crashed; inputs in {CRASHES}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
