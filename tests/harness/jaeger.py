"""A real Jaeger (v2, all-in-one: OTLP/gRPC receiver, in-memory storage, query API) on loopback with free
ports, from the binary scripts/jaeger.sh builds once into the cache; and reading a trace back through
its HTTP query API (``/api/traces/<trace id>``).

Only the OTLP/gRPC receiver and the query extension listen (each on a port picked here); Jaeger's own
metrics, sampling, zpages and health endpoints are left out of the configuration, so nothing binds a
fixed port and several test runs on one machine do not collide.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgehub.sync import free_port
from tests.harness.wait import assert_eventually

VERSION = "1.75.0"
"""scripts/jaeger.sh's ``JAEGER_VERSION``, without the ``v``."""


def binary() -> Path:
    cache = Path(os.environ.get("EDGEHUB_CACHE", Path.home() / ".cache" / "edgehub"))
    return cache / "jaeger" / VERSION / "bin" / "jaeger"


CONFIG = """\
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    traces:
      level: none
    logs:
      level: warn
extensions:
  jaeger_query:
    enable_tracing: false  # on, its own spans go to the default OTLP port: nobody's, or another test's
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{query_port}
    grpc:
      endpoint: 127.0.0.1:{query_grpc_port}
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 10000
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{otlp_port}
processors:
  batch:
    timeout: 200ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"""


@dataclass
class Jaeger:
    proc: subprocess.Popen[bytes]
    otlp_endpoint: str
    """Where daemons send spans (``[tracing] otlp_endpoint``)."""
    query_url: str
    log: Path

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        """The spans of ``trace_id`` as Jaeger's query API returns them ([] while it has none)."""
        try:
            with urllib.request.urlopen(f"{self.query_url}/api/traces/{trace_id}", timeout=10) as answer:
                body = json.load(answer)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise
        data = body.get("data") or []
        spans: list[dict[str, Any]] = []
        for found in data:
            processes = found.get("processes", {})
            for span in found.get("spans", []):
                span["service"] = processes.get(span.get("processID"), {}).get("serviceName", "")
                spans.append(span)
        return spans

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.query_url}/api/services", timeout=2) as answer:
                return answer.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_jaeger(folder: Path) -> Jaeger:
    """Start Jaeger in ``folder`` (its config and log); fails the test when scripts/jaeger.sh has not
    built it on this machine (a setup error, not a skip)."""
    exe = binary()
    if not exe.exists():
        pytest.fail(f"no Jaeger at {exe}: run scripts/jaeger.sh (make setup does)")
    ports = {"query_port": free_port(), "query_grpc_port": free_port(), "otlp_port": free_port()}
    config = folder / "jaeger.yaml"
    config.write_text(CONFIG.format(**ports))
    log = folder / "jaeger.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(exe), "--config", str(config)], stdout=out, stderr=subprocess.STDOUT)
    jaeger = Jaeger(
        proc,
        f"http://127.0.0.1:{ports['otlp_port']}",
        f"http://127.0.0.1:{ports['query_port']}",
        log,
    )
    try:
        assert_eventually(
            lambda: jaeger.ready() or (proc.poll() is not None and "exited"),
            timeout=60,
            what="Jaeger's query API",
        )
        assert proc.poll() is None, f"Jaeger exited: {log.read_text(errors='replace')[-2000:]}"
    except BaseException:
        jaeger.stop()
        raise
    return jaeger


@pytest.fixture(scope="module")
def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jaeger]:
    server = start_jaeger(tmp_path_factory.mktemp("jaeger"))
    try:
        yield server
    finally:
        server.stop()
