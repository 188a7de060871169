"""OpenTelemetry traces of agent runs and steps, exported over OTLP/gRPC (``[tracing]``; off by default).

An agent the hub started (a goal's task) runs in the goal's trace: the StartAgent command's NATS headers
carry the hub's ``task`` span, the agent keeps it (``AgentState.trace_parent``) and each ``agent.run`` -
the first, and every resume after a crash, a restart, a drain, an approval or a migration - is its
child. An agent started here is one trace per run. Each event a step puts in the outbox keeps the
context of its ``checkpoint`` span (the outbox's ``traceparent``), sent as the event's NATS headers, so
the hub's ``event.applied`` span joins the same trace (``edgehub.sync.tracing``, ``edgehub.hub.tracing``)::

    agent.run        edgehub.agent.id, edgehub.device.id, edgehub.agent.goal_chars, edgehub.agent.epoch,
    │                edgehub.agent.first_step; at the end edgehub.agent.status, edgehub.agent.steps
    └─ agent.step    edgehub.agent.id, edgehub.agent.step; once committed edgehub.step.kind,
       │             edgehub.tool.name, edgehub.tool.outcome, edgehub.tool.replayed, edgehub.policy.effect,
       │             edgehub.policy.rule, edgehub.tokens.{prompt,evaluated,completion}, edgehub.agent.status
       ├─ compact    only when the window overflowed: the model summarises old turns (+ checkpoint)
       ├─ think      the model call, waiting for the shared model included; edgehub.tokens.*
       ├─ act        the execution gateway and the tool; status ERROR with the error kind when it failed
       └─ checkpoint the step's one SQLite transaction
    agent.end        an agent ended outside a run (stopped by an operator or the hub, or an internal error)

Privacy: attributes carry identifiers, counts, names from the configuration and error *kinds* only. The
goal, thoughts, tool arguments, observations, answers and failure reasons can hold personal data and are
never put on a span (the goal only as its length; a tool name the model invented as ``(unknown)``).
Exceptions that escape a step are recorded (type, message, stack): they come from the platform, as a
tool's failure is an observation and is recorded by its kind only.

Cost: with tracing off the loop holds the API's no-op tracer, and every span is one shared no-op context
(no span object, no context switch, no attribute built). The SDK and the exporter are imported only when
tracing is configured. When on, an SDK span costs about 60 us on a 2-core VM (4-5 a step, next to a
model call of 100s of ms), and spans leave in batches from a background thread.

Spans are best effort: the mind-log is the durable record. Spans a collector does not take within the
exporter's timeout (``OTEL_EXPORTER_OTLP_TIMEOUT``, 10 s) are dropped; the flush at shutdown waits about
that long for an unreachable collector (the SDK's own bound is 30 s).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from opentelemetry.trace import INVALID_SPAN, NoOpTracer, Span, StatusCode, Tracer, get_current_span
from opentelemetry.util.types import AttributeValue

from edgehub.llm import Completion
from edgehub.protocol.v1 import agent_pb2
from edgehub.sync.tracing import linked, tracer_provider

from .config import TracingConfig

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

S = agent_pb2
SCOPE = "edgehub.edge"
_OFF: AbstractContextManager[Span] = contextlib.nullcontext(INVALID_SPAN)
Attrs = dict[str, AttributeValue]


def _version() -> str:
    try:
        return importlib.metadata.version("edgehub-edge")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


class Tracing:
    """The daemon's tracer: an SDK provider exporting in batches, or the API's no-op tracer when off."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self._provider = provider
        self.tracer: Tracer = provider.get_tracer(SCOPE, _version()) if provider else NoOpTracer()

    @classmethod
    def from_config(
        cls, cfg: TracingConfig, device_id: str, *, exporter: SpanExporter | None = None
    ) -> Tracing:
        """Tracing as configured; ``exporter`` replaces the OTLP one (tests). Off without an endpoint."""
        provider = tracer_provider(
            endpoint=cfg.otlp_endpoint,
            service_name=cfg.service_name,
            sample_ratio=cfg.sample_ratio,
            resource={"service.instance.id": device_id, "device.id": device_id},
            version=_version(),
            exporter=exporter,
        )
        return cls(provider)

    @property
    def enabled(self) -> bool:
        return self._provider is not None

    def shutdown(self) -> None:
        """Export what is buffered and stop (blocks: see the module docstring); idempotent."""
        provider, self._provider = self._provider, None
        if provider is not None:
            provider.shutdown()


def status_name(status: agent_pb2.AgentStatus.ValueType) -> str:
    return S.AgentStatus.Name(status).removeprefix("AGENT_STATUS_").lower()


def kind_name(kind: agent_pb2.StepKind.ValueType) -> str:
    return S.StepKind.Name(kind).removeprefix("STEP_KIND_").lower()


def step_attributes(event: agent_pb2.StepEvent) -> Attrs:
    """What a committed mind-log event says about its step, without its texts."""
    attrs: Attrs = {
        "edgehub.step.kind": kind_name(event.kind),
        "edgehub.agent.status": status_name(event.status),
    }
    if event.kind not in (S.STEP_KIND_ACTION, S.STEP_KIND_APPROVAL_REQUESTED):
        return attrs  # an end (budget) or a compaction: no call
    result = event.observation
    if event.HasField("action"):
        attrs["edgehub.tool.name"] = "(unknown)" if result.error == "unknown_tool" else event.action.tool
    else:
        attrs["edgehub.tool.name"] = "(invalid)"  # the model's output was not an action
    attrs["edgehub.tool.outcome"] = "ok" if result.ok else (result.error or "error")
    attrs["edgehub.tool.replayed"] = result.replayed
    if result.decision.effect:
        attrs["edgehub.policy.effect"] = result.decision.effect
        attrs["edgehub.policy.rule"] = result.decision.rule
    if event.HasField("tokens"):
        attrs["edgehub.tokens.prompt"] = event.tokens.prompt
        attrs["edgehub.tokens.evaluated"] = event.tokens.evaluated
        attrs["edgehub.tokens.completion"] = event.tokens.completion
    return attrs


class AgentSpans:
    """The agent loop's spans; with the no-op tracer (or none) each is one shared no-op context."""

    def __init__(self, tracer: Tracer | None) -> None:
        self._tracer: Tracer = tracer or NoOpTracer()
        self.on = not isinstance(self._tracer, NoOpTracer)

    def phase(self, name: str) -> AbstractContextManager[Span]:
        """A child of the current span: ``think``, ``act``, ``checkpoint``, ``compact``."""
        return self._tracer.start_as_current_span(name) if self.on else _OFF

    def run(self, state: agent_pb2.AgentState, device_id: str) -> AbstractContextManager[Span]:
        if not self.on:
            return _OFF
        attrs: Attrs = {
            "edgehub.agent.id": state.agent_id,
            "edgehub.device.id": device_id,
            "edgehub.agent.goal_chars": len(state.goal),
            "edgehub.agent.epoch": state.epoch,
            "edgehub.agent.first_step": state.step,
        }
        return self._root("agent.run", attrs, state.trace_parent)

    def _root(self, name: str, attrs: Attrs, parent: str = "") -> AbstractContextManager[Span]:
        # runs are scheduled, not requested: never a child of whatever span is current, but of what
        # started the agent (``AgentState.trace_parent``: the hub's task) or else a trace of its own
        return self._tracer.start_as_current_span(name, context=linked(parent), attributes=attrs)

    def run_ended(self, span: Span, state: agent_pb2.AgentState) -> None:
        if not span.is_recording():
            return
        status = status_name(state.status)
        span.set_attributes({"edgehub.agent.status": status, "edgehub.agent.steps": state.usage.steps})
        if state.status == S.AGENT_STATUS_FAILED:
            span.set_status(StatusCode.ERROR, "agent failed")

    def step(self, state: agent_pb2.AgentState) -> AbstractContextManager[Span]:
        if not self.on:
            return _OFF
        attrs: Attrs = {"edgehub.agent.id": state.agent_id, "edgehub.agent.step": state.step}
        return self._tracer.start_as_current_span("agent.step", attributes=attrs)

    def end(self, agent_id: str, status: agent_pb2.AgentStatus.ValueType) -> AbstractContextManager[Span]:
        """An agent ended from outside its run (``AgentLoop.end``): a trace of its own."""
        if not self.on:
            return _OFF
        return self._root(
            "agent.end", {"edgehub.agent.id": agent_id, "edgehub.agent.status": status_name(status)}
        )

    def committed(self, event: agent_pb2.StepEvent) -> None:
        """Describe the current step span (or ``agent.end``) by the event it just committed."""
        if self.on and (span := get_current_span()).is_recording():
            span.set_attributes(step_attributes(event))

    def thought(self, span: Span, completion: Completion) -> None:
        if span.is_recording():
            span.set_attributes(
                {
                    "edgehub.tokens.prompt": completion.prompt_tokens,
                    "edgehub.tokens.evaluated": completion.evaluated_tokens,
                    "edgehub.tokens.completion": completion.completion_tokens,
                }
            )

    def escalated(self, span: Span, reason: str, outcome: str, note: str) -> None:
        if span.is_recording():
            span.set_attributes({"edgehub.escalation.reason": reason, "edgehub.escalation.outcome": outcome})
            if outcome != "answered":
                span.add_event("escalation", {"note": note})

    def acted(self, span: Span, result: agent_pb2.ToolResult) -> None:
        if span.is_recording() and not result.ok and result.error != "needs_approval":
            span.set_status(StatusCode.ERROR, result.error or "error")
