"""One fuzzing run of one target in a subprocess, for ``make test`` (a small fixed budget) and for
``make bench B=fuzz`` (a longer one): the command line, and the figures libFuzzer prints at the end.

The committed corpus (``tests/fuzz/corpus/<target>``) is read, never written: libFuzzer writes what it
finds into the first folder it is given, a temporary one here. Crashes go to ``artifacts``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).resolve().parent / "corpus"
TARGETS = ("events", "twins", "api", "commands")
MAX_LEN = 2048
"""Bytes of the largest input: enough for a batch of three events with bodies."""


@dataclass(frozen=True, slots=True)
class Run:
    """What one run did (libFuzzer's final statistics)."""

    target: str
    returncode: int
    executions: int
    execs_per_s: float
    coverage: int
    """Edges of the instrumented ``edgehub`` code the corpus reaches (libFuzzer's ``cov``)."""
    new_inputs: int
    seconds: float
    output: str

    @property
    def crashed(self) -> bool:
        return self.returncode != 0


def command(target: str, work: Path, artifacts: Path, *flags: str) -> list[str]:
    return [
        sys.executable, "-m", "tests.fuzz.run", target, str(work), str(CORPUS / target),
        f"-max_len={MAX_LEN}", "-len_control=0", "-print_final_stats=1",
        f"-artifact_prefix={artifacts}/", *flags,
    ]  # fmt: skip


def _stat(output: str, name: str) -> float:
    found = re.findall(rf"stat::{name}:\s*([0-9.]+)", output)
    return float(found[-1]) if found else 0.0


def run(target: str, work: Path, artifacts: Path, *flags: str, timeout_s: float = 600) -> Run:
    """Fuzz ``target`` with libFuzzer ``flags`` (``-runs=N`` or ``-max_total_time=S``, ``-seed=N``)."""
    work.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    done = subprocess.run(
        command(target, work, artifacts, *flags),
        cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    coverage = re.findall(r"\bcov: (\d+)", output)
    return Run(
        target=target,
        returncode=done.returncode,
        executions=int(_stat(output, "number_of_executed_units")),
        execs_per_s=_stat(output, "average_exec_per_sec"),
        coverage=int(coverage[-1]) if coverage else 0,
        new_inputs=int(_stat(output, "new_units_added")),
        seconds=time.monotonic() - started,
        output=output,
    )


def crash_report(result: Run) -> str:
    """The traceback and the reproduction line of a crashed run."""
    lines = [line for line in result.output.splitlines() if not line.startswith("INFO: Instrumenting")]
    start = next((i for i, line in enumerate(lines) if "Uncaught Python exception" in line), 0)
    return "\n".join(lines[start : start + 60])
