"""One distributed trace across hub and edges: W3C trace context carried between processes, and the
tracer provider both daemons build from their ``[tracing]`` section.

Carried where: in the headers of NATS messages (hub -> edge commands, edge -> hub events), in gRPC
metadata (``opentelemetry-instrumentation-grpc``'s interceptors), and persisted as a ``traceparent``
string where work outlives a process (a goal record, an agent's state, an outbox row).

Parsing and formatting are the W3C ``TraceContextTextMapPropagator``'s, never ours. What comes in is
untrusted: only ``traceparent`` and ``tracestate`` are read, each capped (``MAX_TRACEPARENT_CHARS``,
``MAX_TRACESTATE_CHARS``; a longer value is ignored, not cut), the propagator rejects a malformed or
all-zero id, and a trace context never names a record: ids of goals, tasks and agents are the hub's.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from opentelemetry.context import Context
from opentelemetry.trace import get_current_span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger("edgehub.sync.tracing")

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
MAX_TRACEPARENT_CHARS = 55
"""``00-<32 hex>-<16 hex>-<2 hex>``: version 00 is exactly 55 characters."""
MAX_TRACESTATE_CHARS = 512
"""W3C asks vendors to propagate at least 512 characters of ``tracestate``; more is dropped."""
_CAPS = {TRACEPARENT: MAX_TRACEPARENT_CHARS, TRACESTATE: MAX_TRACESTATE_CHARS}
_PROPAGATOR = TraceContextTextMapPropagator()


def inject(headers: dict[str, str], context: Context | None = None) -> dict[str, str]:
    """Add the trace context of ``context`` (default: the current one) to ``headers``; returns them.
    Nothing is added when there is no valid span (tracing off: the no-op span has none)."""
    _PROPAGATOR.inject(headers, context=context)
    return headers


def extract(headers: Mapping[str, str] | None) -> Context:
    """The trace context in ``headers`` (NATS headers, gRPC metadata as a mapping), validated; an empty
    context when there is none or it is malformed or oversized."""
    carrier: dict[str, str] = {}
    for name, cap in _CAPS.items():
        value = (headers or {}).get(name)
        if isinstance(value, str) and len(value) <= cap:
            carrier[name] = value
    return _PROPAGATOR.extract(carrier) if TRACEPARENT in carrier else Context()


def traceparent(context: Context | None = None) -> str:
    """The ``traceparent`` of the current span (or of ``context``): '' when there is none. What is
    persisted with a record whose later work joins the same trace."""
    return inject({}, context).get(TRACEPARENT, "")


def parent_context(value: str) -> Context | None:
    """The context to start a child span in from a persisted ``traceparent``; None when ``value`` is
    empty or not a valid one (the caller then starts a trace of its own)."""
    if not value:
        return None
    context = extract({TRACEPARENT: value})
    return context if get_current_span(context).get_span_context().is_valid else None


def linked(value: str) -> Context:
    """``parent_context`` or, failing that, an empty context (a new trace)."""
    return parent_context(value) or Context()


def tracer_provider(
    *,
    endpoint: str | None,
    service_name: str,
    sample_ratio: float,
    resource: Mapping[str, str],
    version: str,
    exporter: SpanExporter | None = None,
) -> TracerProvider | None:
    """An SDK provider exporting in batches over OTLP/gRPC to ``endpoint`` (``exporter`` replaces that
    one in tests); None when neither is given: tracing off. Sampling follows the parent's decision when
    there is one (an edge samples a task's agent as the hub sampled its goal), else ``sample_ratio``."""
    if endpoint is None and exporter is None:
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    if exporter is None:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=endpoint)
    attrs = {"service.name": service_name, "service.version": version, **resource}
    provider = TracerProvider(
        sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
        resource=Resource.create(attrs),
        shutdown_on_exit=False,  # the daemon shuts it down; an atexit hook would keep it alive
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    log.info("tracing to %s (%g of new traces)", endpoint or exporter, sample_ratio)
    return provider
