"""Prometheus metrics of the edge daemon (``[metrics] port``; off by default).

One registry per daemon (several daemons can live in one test process). Steps, ends, policy decisions
and stops are observed from the mind-log events the loop commits (``EdgeMetrics.observe_step``); the
outbox depth, publishing, the data folder's free space and resident memory by process and part
(``footprint.py``) at scrape time. Labels stay bounded: the device, tool names, policy rule ids and
fixed words; never an agent or goal id. docs/operations.md, "Metrics and alerts", says what each means.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from edgehub.protocol.v1 import agent_pb2

from .agent.stops import WARNING, stop_cause
from .footprint import measure_daemon

S = agent_pb2
Family = GaugeMetricFamily | CounterMetricFamily
ENDED = {
    S.AGENT_STATUS_FINISHED: "finished",
    S.AGENT_STATUS_FAILED: "failed",
    S.AGENT_STATUS_STOPPED: "stopped",
}
"""The statuses an agent ends with, as the ``outcome`` label of ``edgehub_edge_agents_ended``."""
PHASE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
RATIO_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


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
        data_dir: Path | None = None,
        shadow: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        self.device_id = device_id
        self.shadow = shadow
        """Steps offered to a rollout's shadow model, by outcome (``ShadowCounts.by_outcome``)."""
        self.outbox_depth = outbox_depth
        self.running = running
        self.published = published
        self.data_dir = data_dir
        """The folder whose file system's free space is reported (None: not reported)."""

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
        if self.data_dir is not None:
            yield from self._disk(self.data_dir)
        if self.shadow is not None:
            shadow = CounterMetricFamily(
                "edgehub_edge_shadow_steps",
                "Steps offered to a rollout's shadow model, by outcome (recorded, skipped, timeout, failed)",
                labels=["device", "outcome"],
            )
            for outcome, n in self.shadow().items():
                shadow.add_metric([d, outcome], n)
            yield shadow
        yield self._memory()

    def _disk(self, data_dir: Path) -> Iterator[GaugeMetricFamily]:
        """Free and total bytes of the data folder's file system (what a non-root writer may use)."""
        try:
            fs = os.statvfs(data_dir)
        except OSError:  # the folder is gone or unreadable: nothing to report, the scrape goes on
            return
        for name, text, value in (
            ("free", "Bytes free for the daemon on the data folder's file system", fs.f_bavail),
            ("size", "Size in bytes of the data folder's file system", fs.f_blocks),
        ):
            family = GaugeMetricFamily(f"edgehub_edge_data_fs_{name}_bytes", text, labels=["device"])
            family.add_metric([self.device_id], value * fs.f_frsize)
            yield family

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
    """The daemon's registry: step counters and histograms, and what ``add_collector`` adds.
    ``n_ctx`` is the model's context window (0: context pressure is not observed)."""

    def __init__(self, device_id: str, n_ctx: int = 0) -> None:
        self.registry = CollectorRegistry()
        self.device = device_id
        self.n_ctx = n_ctx
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
        self._kpis()
        self._server: WSGIServer | None = None

    def _kpis(self) -> None:
        """The operator's KPIs (docs/operations.md): context pressure, model vs tool time, policy
        decisions, stops and how agents ended."""
        r = self.registry
        self.context_ratio = Histogram(
            "edgehub_edge_context_ratio",
            "Context-window pressure per step: (prompt + completion tokens) / n_ctx",
            ["device"],
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.phase_seconds = Histogram(
            "edgehub_edge_step_phase_seconds",
            "Time of one step's phase: kind=model (prompt evaluation + decoding) or kind=tool",
            ["device", "kind"],
            buckets=PHASE_BUCKETS,
            registry=r,
        )
        self.decisions = Counter(
            "edgehub_edge_policy_decisions",
            "Admission decisions on tool calls, by effect (allow, deny, needs_approval) and the rule",
            ["device", "effect", "rule"],
            registry=r,
        )
        self.stuck_warnings = Counter(
            "edgehub_edge_stuck_warnings",
            "Stuck-loop warnings (the agent told to re-plan)",
            ["device"],
            registry=r,
        )
        self.stuck_stops = Counter(
            "edgehub_edge_stuck_stops", "Agents stopped by the stuck-loop monitor", ["device"], registry=r
        )
        self.budget_stops = Counter(
            "edgehub_edge_budget_stops",
            "Agents stopped by an exhausted budget (step, token, tool-call, wall-time)",
            ["device", "budget"],
            registry=r,
        )
        self.ended = Counter(
            "edgehub_edge_agents_ended",
            "Agents that ended, by outcome (finished, failed, stopped)",
            ["device", "outcome"],
            registry=r,
        )

    def observe_step(self, event: agent_pb2.StepEvent) -> None:
        """Count a committed mind-log event: an action step's tool, outcome, time, tokens, context
        pressure and policy decision; an approval wait's decision; a warning; an agent's end."""
        d = self.device
        if event.kind == S.STEP_KIND_ACTION:
            self._action(event)
        elif event.kind == S.STEP_KIND_APPROVAL_REQUESTED:
            self._decision(event.observation)
        if event.detail.startswith(WARNING):
            self.stuck_warnings.labels(d).inc()
        outcome = ENDED.get(event.status)
        if outcome is None:
            return
        self.ended.labels(d, outcome).inc()
        if outcome == "failed":
            cause, budget = stop_cause(event.detail)
            if cause == "stuck":
                self.stuck_stops.labels(d).inc()
            elif cause == "budget":
                self.budget_stops.labels(d, budget).inc()

    def _action(self, event: agent_pb2.StepEvent) -> None:
        d = self.device
        outcome = "ok" if event.observation.ok else (event.observation.error or "error")
        self.steps.labels(d, event.action.tool or "(invalid)", outcome).inc()
        self.step_seconds.labels(d).observe(event.timings.total_ms / 1000)
        self.tokens.labels(d, "evaluated").inc(event.tokens.evaluated)
        self.tokens.labels(d, "completion").inc(event.tokens.completion)
        if event.tokens.prompt and self.n_ctx > 0:  # a replayed step asked the model nothing
            used = event.tokens.prompt + event.tokens.completion
            self.context_ratio.labels(d).observe(used / self.n_ctx)
            self.phase_seconds.labels(d, "model").observe(event.timings.model_ms / 1000)
        self.phase_seconds.labels(d, "tool").observe(event.timings.tool_ms / 1000)
        self._decision(event.observation)

    def _decision(self, result: agent_pb2.ToolResult) -> None:
        if result.HasField("decision"):
            self.decisions.labels(self.device, result.decision.effect, result.decision.rule).inc()

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
