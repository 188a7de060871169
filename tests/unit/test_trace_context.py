"""W3C trace context between processes (``edgehub.sync.tracing``): what is sent, and what is taken from
untrusted headers (only valid, bounded ``traceparent``/``tracestate``), with the SDK's own tracer."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer, get_current_span

from edgehub.edge.uplink.api import TraceMetadata
from edgehub.sync import tracing

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{SPAN}-01"


@pytest.fixture
def tracer() -> Iterator[Tracer]:
    provider = TracerProvider(shutdown_on_exit=False)
    yield provider.get_tracer("test")
    provider.shutdown()


def test_the_current_span_is_sent_as_traceparent_and_read_back_as_the_same_parent(tracer: Tracer) -> None:
    with tracer.start_as_current_span("task") as span:
        headers = tracing.inject({"Nats-Msg-Id": "dev/1"})
    ctx = span.get_span_context()
    assert headers["Nats-Msg-Id"] == "dev/1"
    assert headers["traceparent"] == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
    parent = get_current_span(tracing.extract(headers)).get_span_context()
    assert (parent.trace_id, parent.span_id, parent.is_remote) == (ctx.trace_id, ctx.span_id, True)


def test_without_a_span_nothing_is_sent_and_nothing_is_persisted() -> None:
    assert tracing.inject({"Nats-Msg-Id": "dev/1"}) == {"Nats-Msg-Id": "dev/1"}
    assert tracing.traceparent() == ""
    assert tracing.parent_context("") is None


@pytest.mark.parametrize(
    "value",
    [
        f"00-{'0' * 32}-{SPAN}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero span id
        f"00-{TRACE[:-1]}g-{SPAN}-01",  # not hex
        f"ff-{TRACE}-{SPAN}-01",  # the forbidden version
        f"00-{TRACE}-{SPAN}-01" + "-x" * 400,  # longer than any valid one
        "../../etc/passwd",
        "",
    ],
)
def test_a_malformed_or_oversized_traceparent_is_ignored(value: str) -> None:
    assert tracing.parent_context(value) is None
    assert not get_current_span(tracing.extract({"traceparent": value})).get_span_context().is_valid
    assert tracing.traceparent(tracing.linked(value)) == ""  # a new trace: nothing of it is echoed


def test_only_the_two_w3c_headers_are_read_and_an_oversized_tracestate_is_dropped() -> None:
    headers = {"traceparent": VALID, "tracestate": "k=" + "v" * 600, "baggage": "user=alice"}
    context = tracing.extract(headers)
    span = get_current_span(context).get_span_context()
    assert (f"{span.trace_id:032x}", f"{span.span_id:016x}") == (TRACE, SPAN)
    assert len(span.trace_state) == 0  # over MAX_TRACESTATE_CHARS: not taken
    assert tracing.inject({}, context) == {"traceparent": VALID}
    kept = tracing.extract({"traceparent": VALID, "tracestate": "vendor=abc"})
    assert tracing.inject({}, kept) == {"traceparent": VALID, "tracestate": "vendor=abc"}


def test_a_persisted_traceparent_gives_back_the_same_parent() -> None:
    assert tracing.traceparent(tracing.linked(VALID)) == VALID


def test_no_provider_is_built_without_an_endpoint_or_exporter() -> None:
    provider = tracing.tracer_provider(
        endpoint=None, service_name="x", sample_ratio=1.0, resource={}, version="0"
    )
    assert provider is None


async def test_the_devices_api_calls_carry_the_current_trace_context_as_grpc_metadata(tracer: Tracer) -> None:
    """``DeviceApi``'s interceptor, against a real gRPC server on a free port: the current span goes as
    ``traceparent`` metadata, and nothing goes when there is no span."""
    seen: list[dict[str, str]] = []

    async def call(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        seen.append({k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)})
        return request

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(call)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Echo", {"Call": handler})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=[TraceMetadata()]) as channel:
            echo = channel.unary_unary("/test.Echo/Call")
            with tracer.start_as_current_span("migrate_out") as span:
                assert await echo(b"x") == b"x"
            await echo(b"y")
    finally:
        await server.stop(None)
    ctx = span.get_span_context()
    assert seen[0]["traceparent"] == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
    assert "traceparent" not in seen[1]
