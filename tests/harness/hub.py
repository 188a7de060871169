"""The hub daemon as a subprocess, with its embedded nats-server on a free loopback port."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from edgehub.sync import free_port

EDGEHUB = [sys.executable, "-m", "edgehub.cli"]


def start_hub(
    tmp_path: Path, hub_id: str = "hub-test", *, metrics_port: int | None = None, port: int = 0
) -> tuple[subprocess.Popen[str], str, str]:
    """Start ``edgehub hub run``; returns the process, the NATS URL edges use and the API address.

    The embedded nats-server keeps its store in ``tmp_path / "nats"``; pass ``port`` to restart a
    hub on the same server address after killing the previous one.
    """
    port = port or free_port()
    api = f"127.0.0.1:{free_port()}"
    metrics = {"EDGEHUB_HUB__METRICS__PORT": str(metrics_port)} if metrics_port else {}
    env = {
        **metrics,
        **os.environ,
        "EDGEHUB_HUB__NATS__EMBEDDED_PORT": str(port),
        "EDGEHUB_HUB__NATS__EMBEDDED_STORE": str(tmp_path / "nats"),
        "EDGEHUB_HUB__HUB__ID": hub_id,
        "EDGEHUB_HUB__API__ADDR": api,
    }
    proc = subprocess.Popen([*EDGEHUB, "hub", "run"], env=env, stderr=subprocess.PIPE, text=True)
    return proc, f"nats://127.0.0.1:{port}", api
