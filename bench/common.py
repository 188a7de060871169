"""Shared benchmark plumbing: the machine, the result file, the table.

Every benchmark writes ``bench/results/<name>.json``:
``{"name", "machine", "quick", "checks": [{"figure", "value", "unit", "target", "met"}]}``
with one check per target its issue names, and prints its figures beside the peer or limit
measured in the same run.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).resolve().parent / "results"
QUICK = os.environ.get("QUICK", "") not in ("", "0")
console = Console()


@dataclass(frozen=True, slots=True)
class Check:
    figure: str
    value: float
    unit: str
    target: str
    """Human-readable target, e.g. "<= 5" or ">= 0.95"."""
    met: bool


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    system = f"Linux {platform.release()}, Python {platform.python_version()}"
    return f"{cpu}, {os.cpu_count()} cores, {mem_gib:.0f} GiB, {system}"


def pct(values: list[float], q: float) -> float:
    """Percentile by nearest rank (q in 0..100)."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def median(values: list[float]) -> float:
    return statistics.median(values)


def write_result(name: str, checks: list[Check]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = {"name": name, "machine": machine(), "quick": QUICK, "checks": [asdict(c) for c in checks]}
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def print_table(title: str, headers: list[str], rows: list[list[str]]) -> None:
    table = Table(title=title)
    for h in headers:
        table.add_column(h)
    for row in rows:
        table.add_row(*row)
    console.print(table)


def print_checks(checks: list[Check]) -> None:
    print_table(
        "checks",
        ["figure", "value", "target", "met"],
        [[c.figure, f"{c.value:.3g} {c.unit}", c.target, "yes" if c.met else "NO"] for c in checks],
    )
