"""The hub's spans (``edgehub.hub.tracing``) into the SDK's in-memory exporter: a goal's span is kept in
its record, each command is sent in a span of the goal's trace (its headers carry it), and an applied
event gets a span only when its headers hold a valid trace context."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from nats.aio.msg import Msg
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from edgehub.hub.config import TracingConfig
from edgehub.hub.goals.record import new_record
from edgehub.hub.tracing import HubTracing
from edgehub.protocol.v1 import commands_pb2, events_pb2, goals_pb2
from edgehub.sync import tracing
from edgehub.sync.commands import new_command

G = goals_pb2


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def hub(exporter: InMemorySpanExporter) -> Iterator[HubTracing]:
    traced = HubTracing.from_config(TracingConfig(), "hub-1", exporter=exporter)
    yield traced
    traced.shutdown()


def spans(hub: HubTracing, exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    hub._provider.force_flush()  # type: ignore[union-attr]
    return {s.name: s for s in exporter.get_finished_spans()}


def ids(span: ReadableSpan) -> tuple[str, str]:
    assert span.context is not None
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"


def start(goal: G.Goal, device: str = "dev-1") -> commands_pb2.Command:
    cmd = new_command(device, "hub:test")
    cmd.start_agent.agent_id = f"{goal.goal_id}-read-1"
    cmd.start_agent.task_id = f"{goal.goal_id}/read"
    return cmd


def test_a_goal_keeps_its_span_and_its_start_agent_is_sent_in_a_task_span_of_it(
    hub: HubTracing, exporter: InMemorySpanExporter
) -> None:
    goal = new_record("read", by="alice", planner=G.GOAL_PLANNER_OPERATOR)
    with hub.goal(goal):
        goal.trace_parent = tracing.traceparent()
    sent: dict[str, str] = {}
    with hub.command(goal, start(goal)):  # later, maybe in another hub process: only the record links
        tracing.inject(sent)
    found = spans(hub, exporter)
    goal_span, task_span = found["goal"], found["task"]
    assert goal.trace_parent.split("-")[1:3] == list(ids(goal_span))
    assert task_span.parent is not None
    assert f"{task_span.parent.span_id:016x}" == ids(goal_span)[1]
    assert sent["traceparent"].split("-")[1:3] == list(ids(task_span))
    assert dict(task_span.attributes or {}) == {
        "edgehub.goal.id": goal.goal_id,
        "edgehub.device.id": "dev-1",
        "edgehub.task.id": "read",
        "edgehub.agent.id": f"{goal.goal_id}-read-1",
    }
    assert "read" not in [str(v) for v in (goal_span.attributes or {}).values()]  # never the goal's text


def test_a_goal_stored_without_a_trace_parent_gets_commands_in_traces_of_their_own(
    hub: HubTracing, exporter: InMemorySpanExporter
) -> None:
    goal = new_record("older", by="alice", planner=G.GOAL_PLANNER_OPERATOR)  # an older release's record
    with hub.command(goal, start(goal)):
        pass
    assert spans(hub, exporter)["task"].parent is None


def msg(headers: dict[str, str] | None) -> Msg:
    return Msg(_client=None, subject="edgehub.evt.dev-1.a1", headers=headers)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("headers", "traced"),
    [
        ({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}, True),
        ({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"}, False),
        ({"traceparent": "00-" + "a" * 500}, False),
        ({"Nats-Msg-Id": "dev-1/1"}, False),
        (None, False),
    ],
)
def test_an_applied_event_is_a_span_only_under_a_valid_trace_context(
    hub: HubTracing, exporter: InMemorySpanExporter, headers: dict[str, Any] | None, traced: bool
) -> None:
    event = events_pb2.EdgeEvent(device_id="dev-1", seq=7, agent_id="a1")
    hub.applied(event, msg(headers))
    found = spans(hub, exporter)
    assert ("event.applied" in found) == traced
    if traced:
        applied = found["event.applied"]
        assert applied.parent is not None
        assert f"{applied.parent.span_id:016x}" == "00f067aa0ba902b7"
        assert dict(applied.attributes or {})["edgehub.event.seq"] == 7


def test_tracing_off_makes_no_span_and_adds_no_interceptor() -> None:
    off = HubTracing.from_config(TracingConfig(), "hub-1")
    assert not off.enabled
    assert off.server_interceptors() == []
    goal = new_record("read", by="alice", planner=G.GOAL_PLANNER_OPERATOR)
    with off.goal(goal):
        assert tracing.traceparent() == ""
    off.applied(
        events_pb2.EdgeEvent(),
        msg({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}),
    )


def test_an_ended_goal_gets_a_span_from_its_submission_to_its_end_in_its_trace(
    hub: HubTracing, exporter: InMemorySpanExporter
) -> None:
    goal = new_record("read", by="alice", planner=G.GOAL_PLANNER_OPERATOR)
    with hub.goal(goal):
        goal.trace_parent = tracing.traceparent()
    goal.submitted_at, goal.finished_at, goal.status = 1000.0, 1042.5, G.GOAL_STATUS_FAILED
    hub.ended(goal)
    found = spans(hub, exporter)
    ended = found["goal.ended"]
    assert ended.parent is not None
    assert f"{ended.parent.span_id:016x}" == ids(found["goal"])[1]
    assert (ended.start_time, ended.end_time) == (1000 * 10**9, 1042_500_000_000)
    assert dict(ended.attributes or {})["edgehub.goal.status"] == "failed"
