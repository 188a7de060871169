"""The hub daemon as a subprocess, with its embedded nats-server on a free loopback port, its trust
folder (NATS operator keys, the API's CA, the first admin token) in the test's temp folder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import RawCredentials

from edgehub.sync import free_port
from edgehub.sync.auth import Trust
from edgehub.sync.tls import is_loopback, nats_tls

EDGEHUB = [sys.executable, "-m", "edgehub.cli"]


@dataclass
class Hub:
    proc: subprocess.Popen[str]
    url: str
    """The NATS URL edges use."""
    api: str
    trust: Path
    prefix: list[str] = field(default_factory=list)
    """Runs a command where the hub runs (its network namespace, see ``tests.harness.netns``)."""
    log: Path | None = None
    """Where the hub's standard error goes: a file, because a pipe nobody reads while the test runs
    fills up (64 KB of log) and then blocks the hub's event loop on its next log line."""

    def output(self) -> str:
        """What the hub logged so far."""
        return self.log.read_text(errors="replace") if self.log is not None and self.log.exists() else ""

    @property
    def env(self) -> dict[str, str]:
        """What the operator's CLI needs: the API, its CA, the admin token."""
        return {
            "EDGEHUB_API": self.api,
            "EDGEHUB_CA": str(self.trust / "ca.pem"),
            "EDGEHUB_TOKEN_FILE": str(self.trust / "admin.token"),
        }

    def cli(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """``edgehub ARGS`` as the admin operator."""
        return subprocess.run(
            [*self.prefix, *EDGEHUB, *args],
            capture_output=True,
            text=True,
            env={**os.environ, **self.env, **(env or {})},
            timeout=timeout,
            check=False,
        )

    def tls(self) -> dict[str, Any]:
        """``nats.connect`` arguments for ``url`` (TLS first against the hub's CA when it is tls://)."""
        return nats_tls([self.url], self.trust / "ca.pem")

    def creds(self, name: str = "test") -> RawCredentials:
        """Unrestricted NATS credentials (what a hub process uses), for tests that act as the hub."""
        return RawCredentials(Trust.load_or_create(self.trust).hub_creds(name))

    def enroll(
        self, device_id: str, data_dir: Path, prefix: list[str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Enroll a device the way an operator does: a one-time token, then ``edgehub edge enroll``
        (where the device runs: ``prefix``, e.g. its network namespace)."""
        token = self.cli("devices", "enroll-token", device_id)
        assert token.returncode == 0, token.stderr
        device = Hub(self.proc, self.url, self.api, self.trust, prefix or [], self.log)
        return device.cli(
            "edge",
            "enroll",
            "--token",
            token.stdout.strip().splitlines()[-1],
            env={"EDGEHUB_EDGE__DEVICE__ID": device_id, "EDGEHUB_EDGE__DEVICE__DATA_DIR": str(data_dir)},
        )

    def wait_ready(self, timeout: float = 60) -> None:
        """Until the API accepts connections (the trust folder and topology exist by then)."""
        host, port = self.api.rsplit(":", 1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the hub exited: {self.output()[-2000:]}")
            if self.prefix:  # in another namespace: ask from there
                probe = f"import socket; socket.create_connection(({host!r}, {port}), 1)"
                if (
                    subprocess.run(
                        [*self.prefix, sys.executable, "-c", probe], capture_output=True
                    ).returncode
                    == 0
                ):
                    return
                time.sleep(0.3)
                continue
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"the hub's API at {self.api} did not come up in {timeout} s")

    def stop(self) -> str:
        """SIGTERM (if it still runs), wait, and what it logged."""
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        return self.output()


def start_hub(
    tmp_path: Path,
    hub_id: str = "hub-test",
    *,
    metrics_port: int | None = None,
    port: int = 0,
    neo4j: bool = False,
    env: dict[str, str] | None = None,
    prefix: list[str] | None = None,
    host: str = "127.0.0.1",
    device_port: int = 0,
) -> Hub:
    """Start ``edgehub hub run``. The embedded nats-server keeps its store in ``tmp_path / "nats"``
        and the trust folder is ``tmp_path / "trust"``; pass ``port`` to restart a hub on the same server
        address after killing the previous one. ``neo4j``: also start its embedded Neo4j (a JVM: slow), or
    with ``EDGEHUB_HUB__NEO4J__URI`` in ``env``, use that one. ``env`` overrides any setting.
    ``prefix`` runs the hub elsewhere (a network namespace), listening on ``host`` there.
    ``device_port``: the device API's port (0: any; a hub restarted for the same devices needs the
    port it had, which enrollment told them)."""
    port = port or free_port()
    api_port = free_port()
    while api_port in (port, device_port):  # free_port() may hand out a port twice: both must bind
        api_port = free_port()
    api = f"{host}:{api_port}"
    metrics = {"EDGEHUB_HUB__METRICS__PORT": str(metrics_port)} if metrics_port else {}
    trust = tmp_path / "trust"
    env = {
        **metrics,
        **os.environ,
        "EDGEHUB_HUB__NATS__EMBEDDED_PORT": str(port),
        "EDGEHUB_HUB__NATS__EMBEDDED_STORE": str(tmp_path / "nats"),
        "EDGEHUB_HUB__HUB__ID": hub_id,
        "EDGEHUB_HUB__API__ADDR": api,
        "EDGEHUB_HUB__API__DEVICE_ADDR": f"{host}:{device_port}",
        "EDGEHUB_HUB__NATS__EMBEDDED_HOST": host,
        "EDGEHUB_HUB__API__TLS_NAMES": json.dumps(["localhost", "127.0.0.1", host]),
        "EDGEHUB_HUB__AUTH__DIR": str(trust),
        "EDGEHUB_HUB__NEO4J__ENABLED": "true" if neo4j else "false",
        "EDGEHUB_HUB__NEO4J__EMBEDDED_DATA": str(tmp_path / "neo4j"),
        **(env or {}),
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    log = tmp_path / f"{hub_id}-{time.monotonic_ns()}.stderr.log"
    with log.open("w") as stderr:  # the child keeps its own descriptor
        proc = subprocess.Popen([*(prefix or []), *EDGEHUB, "hub", "run"], env=env, stderr=stderr, text=True)
    listen = env["EDGEHUB_HUB__NATS__EMBEDDED_HOST"]
    tls = env.get("EDGEHUB_HUB__NATS__TLS", "").lower()
    scheme = "tls" if tls == "true" or (tls != "false" and not is_loopback(listen)) else "nats"
    return Hub(proc, f"{scheme}://{host}:{port}", api, trust, prefix or [], log)


@contextmanager
def ready_hub(tmp_path: Path, hub_id: str = "hub-test", **options: Any) -> Iterator[Hub]:
    """``start_hub`` (``options`` as it takes them), ready when entered, stopped on leaving, also when
    it never became ready: a module's shared hub fixture is ``with ready_hub(...) as hub: yield hub``."""
    running = start_hub(tmp_path, hub_id, **options)
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()
