"""An edge daemon in a process of its own, so a test can kill -9 it or run it in a network namespace,
with a scripted brain (``edgehub.llm.fake.FakeBrain``) for tests whose subject is not the model:

    python -m tests.harness.edge_proc CONFIG.json MODULE:FUNCTION

CONFIG.json is the EdgeConfig as JSON; FUNCTION maps a prompt to the model's output. SIGTERM drains
it as ``edgehub edge run`` does. ``start_edge`` launches it (from the repository root).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edgehub.sync.server import die_with_parent

ROOT = Path(__file__).resolve().parents[2]


def start_edge(
    config: dict[str, Any], script: str, prefix: list[str] | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """Run an edge daemon with ``config`` and the brain ``script`` (MODULE:FUNCTION); its log goes to
    ``<data_dir>/edge.log``."""
    data_dir = Path(config["device"]["data_dir"])
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "edge-config.json"
    path.write_text(json.dumps(config))
    with (data_dir / "edge.log").open("a") as log:
        return subprocess.Popen(
            [
                *(prefix or []),
                *die_with_parent(),
                sys.executable,
                "-m",
                "tests.harness.edge_proc",
                str(path),
                script,
            ],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=log,
            text=True,
        )


def stop_edges(procs: Iterable[subprocess.Popen[str]], timeout: float = 30) -> None:
    """SIGTERM every edge still running (each drains), then wait; one that does not end is killed."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()


def agent_state(data_dir: Path, agent_id: str) -> Any:
    """The agent (``AgentState``) as the device's store has it, read beside the running daemon (WAL);
    None before the daemon created it."""
    import apsw

    from edgehub.protocol.v1 import agent_pb2

    db = data_dir / "edge.db"
    if not db.exists():
        return None
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        row = conn.execute("SELECT state FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
    except apsw.SQLError:  # the daemon has not created its schema yet
        return None
    finally:
        conn.close()
    return None if row is None else agent_pb2.AgentState.FromString(row[0])


def count_slowly(prompt: str) -> str:
    """A brain whose agent never finishes: one short command a step, each its own (an identical repeat
    would be refused: run_command is not repeatable) (bench/migrate)."""
    steps = re.findall(r"Step (\d+) action: $", prompt)
    command = f"sleep 0.3; echo {steps[-1] if steps else 0}"
    return json.dumps({"thought": "count", "tool": "run_command", "args": {"command": command}})


async def main(config: dict[str, Any], script: str) -> None:
    from edgehub.edge.app import EdgeDaemon
    from edgehub.edge.config import EdgeConfig
    from edgehub.llm.fake import FakeBrain

    cfg = EdgeConfig.model_validate(config)
    module, _, function = script.partition(":")
    brain = FakeBrain(getattr(importlib.import_module(module), function))
    async with EdgeDaemon(cfg, brain=brain) as daemon:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, daemon.request_stop)
        await daemon.run()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(main(json.loads(Path(sys.argv[1]).read_text()), sys.argv[2]))
