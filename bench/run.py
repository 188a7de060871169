"""``make bench [B=name]``: run one benchmark (bench/<name>.py) or all of them, in order."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SKIP = {"run", "common"}


def main(argv: list[str]) -> int:
    names = argv or sorted(p.stem for p in HERE.glob("*.py") if p.stem not in SKIP)
    unknown = [n for n in names if not (HERE / f"{n}.py").exists() or n in SKIP]
    if unknown:
        known = ", ".join(sorted(p.stem for p in HERE.glob("*.py") if p.stem not in SKIP))
        print(f"unknown benchmark(s): {', '.join(unknown)} (known: {known})", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        print(f"==> bench/{name}", flush=True)
        if subprocess.run([sys.executable, str(HERE / f"{name}.py")], check=False).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
