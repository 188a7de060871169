"""Run the real ``edgehub`` CLI in a subprocess, as an operator would."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EDGEHUB = [sys.executable, "-m", "edgehub.cli"]


def edgehub(
    *args: str,
    data_dir: Path,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    stdin: str | bytes | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``edgehub ARGS`` with its edge data dir set to ``data_dir``; ``stdin``: what it reads there
    (default: nothing, at once); ``preexec_fn``: run in the child before the CLI starts."""
    full_env = {**os.environ, "EDGEHUB_EDGE__DEVICE__DATA_DIR": str(data_dir), **(env or {})}
    done = subprocess.run(
        [*EDGEHUB, *args],
        capture_output=True,
        input=stdin.encode() if isinstance(stdin, str) else (stdin if stdin is not None else b""),
        env=full_env,
        timeout=timeout,
        cwd=ROOT,
        check=False,
        preexec_fn=preexec_fn,
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    )


def start_daemon(data_dir: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``edgehub edge run`` in the background; returns once it holds its data dir."""
    full_env = {**os.environ, "EDGEHUB_EDGE__DEVICE__DATA_DIR": str(data_dir), **(env or {})}
    proc = subprocess.Popen(
        [*EDGEHUB, "edge", "run"],
        env=full_env,
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    from edgehub.edge.datadir import DaemonLock

    deadline = time.monotonic() + 60
    while not DaemonLock.held(data_dir):
        if proc.poll() is not None or time.monotonic() > deadline:
            out = proc.communicate(timeout=5)[0] if proc.poll() is not None else "(still starting)"
            raise RuntimeError(f"edge daemon did not start: {out[-2000:]}")
        time.sleep(0.1)
    return proc
