"""The KPI metrics' logic: how a stop reason is classified, how the edge reads a committed event, and
how the hub turns twins and its applied sequences into per-device gauges."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry

from edgehub.edge.agent.stops import stop_cause
from edgehub.edge.metrics import EdgeMetrics
from edgehub.hub.fleet.devices import DeviceWatcher, SeenTwin
from edgehub.hub.metrics import DeviceStateCollector
from edgehub.protocol.v1 import agent_pb2, twin_pb2

S = agent_pb2


def test_stop_reasons_are_classified_by_the_words_the_guards_write() -> None:
    assert stop_cause("stuck: the same failing call 3 times in a row") == ("stuck", "")
    assert stop_cause("tool-call budget exhausted (3 of 3) before finishing") == ("budget", "tool-call")
    assert stop_cause("wall-time budget exhausted (60 of 60) before finishing") == ("budget", "wall-time")
    assert stop_cause("the model's context is too small") == ("other", "")
    assert stop_cause("I got stuck: budget exhausted") == ("other", "")  # only as the reason's start


def sample(metrics: EdgeMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"device": "dev-1", **labels})


def test_a_replayed_step_counts_its_tool_time_but_no_context_pressure() -> None:
    metrics = EdgeMetrics("dev-1", n_ctx=1000)
    asked = S.StepEvent(kind=S.STEP_KIND_ACTION, status=S.AGENT_STATUS_RUNNING)
    asked.tokens.prompt, asked.tokens.completion = 700, 50
    asked.timings.model_ms, asked.timings.tool_ms = 1500, 20
    replayed = S.StepEvent(kind=S.STEP_KIND_ACTION, status=S.AGENT_STATUS_RUNNING)
    metrics.observe_step(asked)
    metrics.observe_step(replayed)
    assert sample(metrics, "edgehub_edge_context_ratio_sum") == 0.75
    assert sample(metrics, "edgehub_edge_context_ratio_count") == 1
    assert sample(metrics, "edgehub_edge_step_phase_seconds_sum", kind="model") == 1.5
    assert sample(metrics, "edgehub_edge_step_phase_seconds_count", kind="tool") == 2


def test_an_approval_wait_counts_its_decision_and_an_end_its_outcome_once() -> None:
    metrics = EdgeMetrics("dev-1", n_ctx=1000)
    wait = S.StepEvent(kind=S.STEP_KIND_APPROVAL_REQUESTED, status=S.AGENT_STATUS_AWAITING_APPROVAL)
    wait.observation.decision.effect, wait.observation.decision.rule = "needs_approval", "ask-first"
    stopped = S.StepEvent(kind=S.STEP_KIND_END, status=S.AGENT_STATUS_STOPPED, detail="stopped by ops")
    metrics.observe_step(wait)
    metrics.observe_step(stopped)
    decided = sample(
        metrics, "edgehub_edge_policy_decisions_total", effect="needs_approval", rule="ask-first"
    )
    assert decided == 1
    assert sample(metrics, "edgehub_edge_agents_ended_total", outcome="stopped") == 1
    assert sample(metrics, "edgehub_edge_agents_ended_total", outcome="failed") is None


def twin(device: str, depth: int, head: int, *, state: int = twin_pb2.DEVICE_STATE_RUNNING) -> SeenTwin:
    t = twin_pb2.DeviceTwin(
        device_id=device,
        state=state,
        heartbeat_s=5,
        sent_at=time.time(),
        outbox_depth=depth,
        outbox_head=head,
    )
    return SeenTwin(t, time.time(), 1)


def test_the_hub_reports_each_devices_online_state_outbox_and_lag_behind_what_it_applied() -> None:
    watcher = DeviceWatcher(None, CollectorRegistry(), revoked={"pi-revoked"})  # type: ignore[arg-type]
    watcher.view = {
        "pi-a": twin("pi-a", depth=3, head=120),
        "pi-b": twin("pi-b", depth=0, head=40, state=twin_pb2.DEVICE_STATE_STOPPED),
        "pi-new": twin("pi-new", depth=5, head=5),
        "pi-revoked": twin("pi-revoked", depth=9, head=9),
    }
    applied = {"pi-a": 100, "pi-b": 40}
    registry = CollectorRegistry()
    registry.register(DeviceStateCollector(lambda: watcher, lambda: applied))
    assert registry.get_sample_value("edgehub_hub_device_online", {"device": "pi-a"}) is None  # not synced
    watcher.synced = True

    def gauge(name: str, device: str) -> float | None:
        return registry.get_sample_value(f"edgehub_hub_device_{name}", {"device": device})

    assert [gauge("online", d) for d in ("pi-a", "pi-b", "pi-new")] == [1.0, 0.0, 1.0]
    assert [gauge("outbox_depth", d) for d in ("pi-a", "pi-b", "pi-new")] == [3.0, 0.0, 5.0]
    assert [gauge("lag_events", d) for d in ("pi-a", "pi-b")] == [20.0, 0.0]
    assert gauge("lag_events", "pi-new") is None  # none of its events handled by this hub yet
    assert gauge("online", "pi-revoked") is None
