"""The hub's OpenTelemetry traces (``[tracing]``; off by default): the hub's part of one trace per goal.

::

    (API call)        the gRPC server span of SubmitGoal, when the API is traced (its caller's
    │                 ``traceparent`` metadata, validated, is its parent)
    └─ goal           edgehub.goal.id, edgehub.goal.planner, edgehub.goal.depth; its traceparent is kept
       │              in the goal record (``Goal.trace_parent``) so any hub process continues the trace
       ├─ goal.plan   the planner's work (the model, or the operator's plan checked); goal.synthesise:
       │              the model writing the goal's answer from its tasks' results
       ├─ goal.ended  the goal's whole life, from its submission to its end (written when it ends, by
       │              whichever hub process ends it): edgehub.goal.status, edgehub.goal.tasks
       └─ task        one per dispatch: edgehub.goal.id, edgehub.task.id, edgehub.agent.id,
          │           edgehub.device.id, edgehub.task.attempt; the StartAgent command carries it in
          │           its NATS headers, and the edge's ``agent.run`` spans are its children
          └─ agent.run / agent.step / think / act / checkpoint   (the edge: ``edgehub.edge.tracing``)
             └─ event.applied   the hub applied the step's event (its NATS headers name the
                                checkpoint that wrote it): edgehub.device.id, edgehub.event.seq

Attributes carry ids and counts only: a goal's text, a task's text and answers never go on a span.
Spans are best effort (the goal record is the durable account); with tracing off every call here is
the API's no-op tracer, at no cost.
"""

from __future__ import annotations

import importlib.metadata
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from nats.aio.msg import Msg
from opentelemetry.trace import NoOpTracer, Span, Tracer
from opentelemetry.util.types import AttributeValue

from edgehub.protocol.v1 import commands_pb2, events_pb2, goals_pb2, hub_pb2
from edgehub.sync import tracing

from .config import TracingConfig

if TYPE_CHECKING:
    import grpc.aio
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

SCOPE = "edgehub.hub"
Attrs = dict[str, AttributeValue]


def _version() -> str:
    try:
        return importlib.metadata.version("edgehub-hub")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


class HubTracing:
    """The hub's tracer: an SDK provider exporting in batches, or the API's no-op tracer when off."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self._provider = provider
        self.tracer: Tracer = provider.get_tracer(SCOPE, _version()) if provider else NoOpTracer()

    @classmethod
    def from_config(
        cls, cfg: TracingConfig, hub_id: str, *, exporter: SpanExporter | None = None
    ) -> HubTracing:
        """Tracing as configured (``exporter`` replaces the OTLP one in tests); off without an endpoint."""
        return cls(
            tracing.tracer_provider(
                endpoint=cfg.otlp_endpoint,
                service_name=cfg.service_name,
                sample_ratio=cfg.sample_ratio,
                resource={"service.instance.id": hub_id},
                version=_version(),
                exporter=exporter,
            )
        )

    @property
    def enabled(self) -> bool:
        return self._provider is not None

    def server_interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """The API's interceptor (``opentelemetry-instrumentation-grpc``): a server span per call of the
        hub's own service (not of health checks or reflection), the child of the caller's W3C
        ``traceparent`` metadata when valid; none when tracing is off."""
        if self._provider is None:
            return []
        from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

        service = hub_pb2.DESCRIPTOR.services_by_name["HubService"].full_name
        return [aio_server_interceptor(self._provider, filters.service_name(service))]

    def goal(self, record: goals_pb2.Goal) -> AbstractContextManager[Span]:
        """The goal's span, current while it is stored and planned (a child of the API call, if any)."""
        attrs: Attrs = {
            "edgehub.goal.id": record.goal_id,
            "edgehub.goal.planner": goals_pb2.GoalPlanner.Name(record.planner).lower(),
            "edgehub.goal.depth": record.depth,
        }
        return self.tracer.start_as_current_span("goal", attributes=attrs)

    def work(
        self, name: str, record: goals_pb2.Goal, **attrs: AttributeValue
    ) -> AbstractContextManager[Span]:
        """The planner model's work on a goal (``goal.plan``, ``goal.synthesise``), in the goal's trace
        whichever hub process does it (the goal's stored traceparent)."""
        tags: Attrs = {"edgehub.goal.id": record.goal_id, "edgehub.goal.replans": record.replans}
        tags |= {f"edgehub.goal.{key}": value for key, value in attrs.items()}
        context = tracing.linked(record.trace_parent)
        return self.tracer.start_as_current_span(name, context=context, attributes=tags)

    def ended(self, record: goals_pb2.Goal) -> None:
        """``goal.ended``: a span from the goal's submission to its end, in its trace, so the trace shows
        how long the goal took (the ``goal`` span itself ends once the goal is stored and planned)."""
        start = int(record.submitted_at * 1e9) if record.submitted_at > 0 else None
        end = int(record.finished_at * 1e9) if record.finished_at > 0 else None
        status = goals_pb2.GoalStatus.Name(record.status).removeprefix("GOAL_STATUS_").lower()
        attrs: Attrs = {
            "edgehub.goal.id": record.goal_id,
            "edgehub.goal.status": status,
            "edgehub.goal.tasks": len(record.tasks),
        }
        span = self.tracer.start_span(
            "goal.ended", context=tracing.linked(record.trace_parent), attributes=attrs, start_time=start
        )
        span.end(end_time=end if end is None or start is None or end >= start else start)

    def command(self, record: goals_pb2.Goal, cmd: commands_pb2.Command) -> AbstractContextManager[Span]:
        """The span a goal's command is sent in (``send_command`` puts it in the headers): ``task`` for a
        StartAgent, ``goal.command`` otherwise; the child of the goal's stored traceparent."""
        kind = cmd.WhichOneof("body") or ""
        attrs: Attrs = {"edgehub.goal.id": record.goal_id, "edgehub.device.id": cmd.device_id}
        name = "goal.command"
        if kind == "start_agent":
            name = "task"
            start = cmd.start_agent
            task_id = start.task_id.rsplit("/", 1)[-1]
            attrs |= {"edgehub.task.id": task_id, "edgehub.agent.id": start.agent_id}
            if (state := record.tasks.get(task_id)) is not None:
                attrs["edgehub.task.attempt"] = state.attempt
        else:
            attrs["edgehub.command.kind"] = kind
        context = tracing.linked(record.trace_parent)
        return self.tracer.start_as_current_span(name, context=context, attributes=attrs)

    def applied(self, event: events_pb2.EdgeEvent, msg: Msg) -> None:
        """A span for an applied event whose headers carry a trace context (one that has none, or an
        invalid one, gets none: no root span per untraced event)."""
        parent = tracing.extract(msg.headers)
        if not self.enabled or not tracing.traceparent(parent):
            return
        attrs: Attrs = {
            "edgehub.device.id": event.device_id,
            "edgehub.event.seq": event.seq,
            "edgehub.agent.id": event.agent_id,
            "edgehub.event.kind": event.WhichOneof("body") or "",
        }
        with self.tracer.start_as_current_span("event.applied", context=parent, attributes=attrs):
            pass

    def shutdown(self) -> None:
        """Export what is buffered and stop (blocks up to the exporter's timeout); idempotent."""
        provider, self._provider = self._provider, None
        if provider is not None:
            provider.shutdown()
