"""Prometheus metrics of the edge daemon (``[metrics] port``; off by default).

One registry per daemon (several daemons can live in one test process). Steps are observed from
the mind-log events the loop commits; outbox depth and publishing from the hub link, and resident
memory by process and part (``footprint.py``) at scrape time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from edgehub.protocol.v1 import agent_pb2

from .footprint import measure_daemon

S = agent_pb2
Family = GaugeMetricFamily | CounterMetricFamily


class DaemonCollector(Collector):
    """What the daemon reports at scrape time: the outbox's depth, the agents stepping, the events
    published (once the hub link has connected) and the resident memory of this process and its model
    workers by part."""

    def __init__(
        self,
        device_id: str,
        *,
        outbox_depth: Callable[[], int],
        running: Callable[[], int],
        published: Callable[[], int | None],
    ) -> None:
        self.device_id = device_id
        self.outbox_depth = outbox_depth
        self.running = running
        self.published = published

    def collect(self) -> Iterator[Family]:
        d = self.device_id
        depth = GaugeMetricFamily(
            "edgehub_edge_outbox_depth", "Events waiting for the hub", labels=["device"]
        )
        depth.add_metric([d], self.outbox_depth())
        yield depth
        running = GaugeMetricFamily("edgehub_edge_agents_running", "Agents stepping now", labels=["device"])
        running.add_metric([d], self.running())
        yield running
        published = self.published()
        if published is not None:
            sent = CounterMetricFamily("edgehub_edge_events_published", "Events published", labels=["device"])
            sent.add_metric([d], published)
            yield sent
        yield self._memory()

    def _memory(self) -> GaugeMetricFamily:
        memory = GaugeMetricFamily(
            "edgehub_edge_memory_bytes",
            "Resident memory by process (daemon, worker) and part (model_file, model_buffers, embeddings,"
            " python)",
            labels=["device", "process", "part"],
        )
        for f in measure_daemon(os.getpid()):
            parts = (
                ("model_file", f.model_file),
                ("model_buffers", f.model_buffers),
                ("embeddings", f.embeddings),
            )
            for part, size in (*parts, ("python", f.python)):
                memory.add_metric([self.device_id, f.role, part], size)
        return memory


class EdgeMetrics:
    """The daemon's registry: step counters and histograms, and what ``add_collector`` adds."""

    def __init__(self, device_id: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"device": device_id}
        self.steps = Counter(
            "edgehub_edge_steps",
            "Agent steps committed",
            ["device", "tool", "outcome"],
            registry=self.registry,
        )
        self.step_seconds = Histogram(
            "edgehub_edge_step_seconds",
            "Wall time of one step (model + tool + checkpoint)",
            ["device"],
            buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.tokens = Counter(
            "edgehub_edge_tokens", "Model tokens by kind", ["device", "kind"], registry=self.registry
        )
        self._labels = labels
        self._server: WSGIServer | None = None

    def observe_step(self, event: agent_pb2.StepEvent) -> None:
        """Count a committed action step (its tool, outcome, time and tokens)."""
        if event.kind != S.STEP_KIND_ACTION:
            return
        d = self._labels["device"]
        outcome = "ok" if event.observation.ok else (event.observation.error or "error")
        self.steps.labels(d, event.action.tool or "(invalid)", outcome).inc()
        self.step_seconds.labels(d).observe(event.timings.total_ms / 1000)
        self.tokens.labels(d, "evaluated").inc(event.tokens.evaluated)
        self.tokens.labels(d, "completion").inc(event.tokens.completion)

    def add_collector(self, collector: Collector) -> None:
        self.registry.register(collector)

    def serve(self, addr: str, port: int) -> int:
        """Serve /metrics on a background thread; returns the bound port."""
        self._server, _ = start_http_server(port, addr=addr, registry=self.registry)
        return int(self._server.server_port)

    def close(self) -> None:
        """Stop serving (a no-op when not serving)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
