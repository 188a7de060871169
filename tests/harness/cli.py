"""Run the real ``edgehub`` CLI in a subprocess, as an operator would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EDGEHUB = [sys.executable, "-m", "edgehub.cli"]


def edgehub(
    *args: str, data_dir: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``edgehub ARGS`` with its edge data dir set to ``data_dir``."""
    full_env = {**os.environ, "EDGEHUB_EDGE__DEVICE__DATA_DIR": str(data_dir), **(env or {})}
    return subprocess.run(
        [*EDGEHUB, *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )
