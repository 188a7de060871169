"""Traces of agent runs and steps: the span tree, its attributes, and that no text of the agent leaks.

The real loop (real store, gateway, policy) on a scripted brain, traced into the OpenTelemetry SDK's own
in-memory exporter; the export path through a real OTLP/gRPC receiver on a free port.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracer, StatusCode, Tracer

from edgehub.edge.agent.loop import AgentLoop, LoopDeps, new_agent
from edgehub.edge.agent.tools.gateway import ExecutionGateway
from edgehub.edge.agent.tools.registry import ToolRegistry
from edgehub.edge.app import EdgeDaemon
from edgehub.edge.config import AgentConfig, EdgeConfig, ToolsConfig, TracingConfig
from edgehub.edge.memory.compaction import Compactor
from edgehub.edge.safety import PolicyAdmission, PolicyEngine
from edgehub.edge.store.sqlite import SqliteStore
from edgehub.edge.tracing import AgentSpans, Tracing
from edgehub.llm.fake import FakeBrain
from edgehub.llm.gate import ModelGate
from edgehub.protocol.v1 import agent_pb2

S = agent_pb2
GOAL = "Email the invoice of Jane Roe (jane.roe@example.com, IBAN DE89370400440532013000) to accounts"
SECRET = "ultramarine-4711"  # written by a tool, read back as an observation, given as the answer
POLICY = """
version = 1

[[rules]]
id = "ask-first"
tools = ["write_file"]
effect = "needs_approval"
args = { path = ["report*"] }

[[rules]]
id = "rest"
tools = ["write_file", "read_file", "remember", "recall", "finish"]
effect = "allow"
"""


def act(tool: str, thought: str = "go", **args: object) -> str:
    return json.dumps({"thought": thought, "tool": tool, "args": args})


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer(exporter: InMemorySpanExporter) -> Iterator[Tracer]:
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("test")
    provider.shutdown()


def make_loop(
    tmp_path: Path, script: Sequence[str], tracer: Tracer | None, **agent_cfg: object
) -> tuple[AgentLoop, SqliteStore]:
    store = SqliteStore.open(tmp_path / "edge.db", device_id="dev-1")
    brain = FakeBrain(script)
    registry = ToolRegistry.default(ToolsConfig(load_entry_points=False))
    (tmp_path / "policy.toml").write_text(POLICY)
    admission = PolicyAdmission(PolicyEngine(tmp_path / "policy.toml"), store)
    deps = LoopDeps(
        store=store,
        registry=registry,
        gateway=ExecutionGateway(registry, store, observation_limit=600, admissions=[admission]),
        model=ModelGate(brain),
        count_tokens=brain.count_tokens,
        compactor=Compactor(brain),
        cfg=AgentConfig(**agent_cfg),  # type: ignore[arg-type]
        device_id="dev-1",
        workspaces=tmp_path / "ws",
        n_ctx=brain.n_ctx,
        max_action_tokens=64,
        tracer=tracer,
    )
    return AgentLoop(deps), store


async def run(loop: AgentLoop, store: SqliteStore, goal: str = GOAL) -> agent_pb2.AgentState:
    store.create_agent(new_agent("a1", goal))
    return await loop.run("a1", asyncio.Event())


def children(spans: Sequence[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    kids = [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]
    return sorted(kids, key=lambda s: s.start_time or 0)


def named(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return sorted((s for s in spans if s.name == name), key=lambda s: s.start_time or 0)


def attrs(span: ReadableSpan) -> dict[str, object]:
    return dict(span.attributes or {})


def texts_of(span: ReadableSpan) -> list[str]:
    """Every string a span carries: attribute values, status, event names and attributes."""
    values = [*span.attributes.values()] if span.attributes else []
    for event in span.events:
        values += [event.name, *(event.attributes or {}).values()]
    return [str(v) for v in [*values, span.name, span.status.description or ""]]


async def test_a_run_is_one_trace_of_steps_with_think_act_and_checkpoint_phases(
    tmp_path: Path, tracer: Tracer, exporter: InMemorySpanExporter
) -> None:
    script = [act("write_file", path="a.txt", content="blue"), act("finish", answer="blue")]
    loop, store = make_loop(tmp_path, script, tracer)
    state = await run(loop, store)
    assert state.status == S.AGENT_STATUS_FINISHED
    spans = exporter.get_finished_spans()
    assert len({s.context.trace_id for s in spans if s.context}) == 1
    (root,) = [s for s in spans if s.parent is None]
    assert root.name == "agent.run"
    assert attrs(root) == {
        "edgehub.agent.id": "a1",
        "edgehub.device.id": "dev-1",
        "edgehub.agent.goal_chars": len(GOAL),
        "edgehub.agent.epoch": 0,
        "edgehub.agent.first_step": 0,
        "edgehub.agent.status": "finished",
        "edgehub.agent.steps": 2,
    }
    steps = children(spans, root)
    assert [s.name for s in steps] == ["agent.step", "agent.step"]
    for step in steps:
        assert [c.name for c in children(spans, step)] == ["think", "act", "checkpoint"]
    first = attrs(steps[0])
    assert first == {
        "edgehub.agent.id": "a1",
        "edgehub.agent.step": 0,
        "edgehub.step.kind": "action",
        "edgehub.agent.status": "running",
        "edgehub.tool.name": "write_file",
        "edgehub.tool.outcome": "ok",
        "edgehub.tool.replayed": False,
        "edgehub.policy.effect": "allow",
        "edgehub.policy.rule": "rest",
        "edgehub.tokens.prompt": first["edgehub.tokens.prompt"],
        "edgehub.tokens.evaluated": first["edgehub.tokens.evaluated"],
        "edgehub.tokens.completion": first["edgehub.tokens.completion"],
    }
    logged = store.mind_log("a1")[0].tokens
    assert (first["edgehub.tokens.evaluated"], first["edgehub.tokens.completion"]) == (
        logged.evaluated,
        logged.completion,
    )
    assert attrs(steps[1])["edgehub.agent.status"] == "finished"
    think = children(spans, steps[0])[0]
    assert attrs(think)["edgehub.tokens.evaluated"] == logged.evaluated
    assert all(s.status.status_code == StatusCode.UNSET for s in spans)


async def test_no_span_carries_the_goal_thoughts_tool_arguments_or_outputs(
    tmp_path: Path, tracer: Tracer, exporter: InMemorySpanExporter
) -> None:
    script = [
        act("write_file", thought=f"store {SECRET} for Jane Roe", path="a.txt", content=SECRET),
        act("read_file", thought="read it back", path="a.txt"),
        act("read_file", thought="and the missing one", path="jane.roe@example.com.txt"),
        act("finish", thought="done", answer=f"the word is {SECRET}"),
    ]
    loop, store = make_loop(tmp_path, script, tracer)
    state = await run(loop, store)
    assert state.answer == f"the word is {SECRET}"
    assert store.mind_log("a1")[1].observation.output == SECRET  # the output exists, on the device
    spans = exporter.get_finished_spans()
    assert len(named(spans, "agent.step")) == 4
    forbidden = [SECRET, "Jane Roe", "jane.roe", "DE89370400440532013000", "invoice", "a.txt", "read it back"]
    leaks = [(s.name, t) for s in spans for t in texts_of(s) for f in forbidden if f in t]
    assert leaks == []


async def test_a_failed_or_refused_call_marks_act_with_its_error_kind_only(
    tmp_path: Path, tracer: Tracer, exporter: InMemorySpanExporter
) -> None:
    script = [
        act("read_file", path="missing.txt"),
        act("launch_missiles", target="moon"),
        '{"thought": "x", "tool": ',
        act("finish", answer="ok"),
    ]
    loop, store = make_loop(tmp_path, script, tracer)
    await run(loop, store)
    spans = exporter.get_finished_spans()
    steps = named(spans, "agent.step")
    described = [attrs(s).get("edgehub.tool.name") for s in steps]
    outcomes = [attrs(s).get("edgehub.tool.outcome") for s in steps]
    assert described == ["read_file", "(unknown)", "(invalid)", "finish"]
    assert outcomes[:3] == [store.mind_log("a1")[i].observation.error for i in range(3)]
    assert outcomes[3] == "ok"
    acts = named(spans, "act")
    assert [(a.status.status_code, a.status.description) for a in acts[:3]] == [
        (StatusCode.ERROR, outcome) for outcome in outcomes[:3]
    ]
    assert acts[3].status.status_code == StatusCode.UNSET
    assert [c.name for c in children(spans, steps[2])] == ["think", "act", "checkpoint"]


async def test_a_call_awaiting_approval_ends_the_run_and_says_why(
    tmp_path: Path, tracer: Tracer, exporter: InMemorySpanExporter
) -> None:
    loop, store = make_loop(tmp_path, [act("write_file", path="report.txt", content=SECRET)], tracer)
    state = await run(loop, store)
    assert state.status == S.AGENT_STATUS_AWAITING_APPROVAL
    spans = exporter.get_finished_spans()
    (step,) = named(spans, "agent.step")
    described = attrs(step)
    assert described["edgehub.step.kind"] == "approval_requested"
    assert described["edgehub.agent.status"] == "awaiting_approval"
    assert (described["edgehub.policy.effect"], described["edgehub.policy.rule"]) == (
        "needs_approval",
        "ask-first",
    )
    assert named(spans, "act")[0].status.status_code == StatusCode.UNSET  # waiting is not an error
    (root,) = named(spans, "agent.run")
    assert attrs(root)["edgehub.agent.status"] == "awaiting_approval"


async def test_an_exhausted_budget_fails_the_run_and_an_outside_stop_is_its_own_trace(
    tmp_path: Path, tracer: Tracer, exporter: InMemorySpanExporter
) -> None:
    loop, store = make_loop(tmp_path, [act("recall", query="x")] * 3, tracer, max_steps=1)
    state = await run(loop, store)
    assert state.status == S.AGENT_STATUS_FAILED
    spans = exporter.get_finished_spans()
    last = named(spans, "agent.step")[-1]
    assert {k: v for k, v in attrs(last).items() if k != "edgehub.agent.id"} == {
        "edgehub.agent.step": 1,
        "edgehub.step.kind": "end",
        "edgehub.agent.status": "failed",
    }
    assert [c.name for c in children(spans, last)] == ["checkpoint"]
    (root,) = named(spans, "agent.run")
    assert (root.status.status_code, root.status.description) == (StatusCode.ERROR, "agent failed")
    assert "budget" not in str(attrs(root))

    store.create_agent(new_agent("a2", GOAL))
    loop.end("a2", S.AGENT_STATUS_STOPPED, "stopped by jane.roe@example.com")
    (end,) = named(exporter.get_finished_spans(), "agent.end")
    assert end.parent is None
    assert attrs(end)["edgehub.agent.status"] == "stopped"
    assert all("jane" not in t for t in texts_of(end))


async def test_an_exception_in_a_step_is_recorded_on_its_phase_step_and_run(
    tmp_path: Path, tracer: Tracer, exporter: InMemorySpanExporter
) -> None:
    loop, store = make_loop(tmp_path, [act("recall", query="x")], tracer)  # the second think raises
    with pytest.raises(RuntimeError, match="script exhausted"):
        await run(loop, store)
    spans = exporter.get_finished_spans()
    failed = [named(spans, "think")[-1], named(spans, "agent.step")[-1], named(spans, "agent.run")[0]]
    for span in failed:
        assert span.status.status_code == StatusCode.ERROR
        assert [e.attributes["exception.type"] for e in span.events if e.attributes] == ["RuntimeError"]


async def test_compaction_is_a_phase_of_the_step_that_needed_it(
    tmp_path: Path, tracer: Tracer, exporter: InMemorySpanExporter
) -> None:
    long = "x " * 60
    script = [act("remember", key=f"k{i}", value=long) for i in range(6)] + [act("finish", answer="ok")]
    loop, store = make_loop(tmp_path, script, tracer, window_tokens=300)
    state = await run(loop, store)
    assert state.summarized_through > 0
    spans = exporter.get_finished_spans()
    (compact, *_) = named(spans, "compact")
    parent = next(
        s for s in spans if s.context and compact.parent and s.context.span_id == compact.parent.span_id
    )
    assert parent.name == "agent.step"
    assert [c.name for c in children(spans, parent)] == ["compact", "think", "act", "checkpoint"]
    assert [c.name for c in children(spans, compact)] == ["checkpoint"]
    assert "edgehub.tool.name" not in attrs(compact)


def test_tracing_off_is_the_no_op_tracer_and_a_shared_no_op_span() -> None:
    tracing = Tracing.from_config(TracingConfig(), "dev-1")
    assert isinstance(tracing.tracer, NoOpTracer)
    assert not tracing.enabled
    spans = AgentSpans(tracing.tracer)
    assert not spans.on
    assert spans.phase("think") is spans.phase("act")  # nothing is created per span
    with spans.phase("think") as span:
        assert not span.is_recording()
    tracing.shutdown()


async def test_configured_tracing_describes_the_device_and_flushes_on_shutdown(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    tracing = Tracing.from_config(TracingConfig(service_name="edge-a"), "dev-1", exporter=exporter)
    loop, store = make_loop(tmp_path, [act("finish", answer="ok")], tracing.tracer)
    await run(loop, store)
    tracing.shutdown()  # the batch processor exports what it holds
    tracing.shutdown()
    spans = exporter.get_finished_spans()
    assert {s.name for s in spans} == {"agent.run", "agent.step", "think", "act", "checkpoint"}
    resource = spans[0].resource.attributes
    assert (resource["service.name"], resource["device.id"]) == ("edge-a", "dev-1")
    assert resource["service.version"]


async def test_a_zero_sample_ratio_records_no_run(tmp_path: Path, exporter: InMemorySpanExporter) -> None:
    tracing = Tracing.from_config(TracingConfig(sample_ratio=0.0), "dev-1", exporter=exporter)
    loop, store = make_loop(tmp_path, [act("finish", answer="ok")], tracing.tracer)
    state = await run(loop, store)
    tracing.shutdown()
    assert state.status == S.AGENT_STATUS_FINISHED
    assert exporter.get_finished_spans() == ()


class _Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """The OTLP trace service as a collector serves it: keeps what it receives."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    def Export(  # noqa: N802 (named by the .proto)
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def collector() -> Iterator[tuple[str, _Receiver]]:
    receiver = _Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"http://127.0.0.1:{port}", receiver
    server.stop(grace=None)


async def test_the_daemon_exports_agent_traces_to_the_configured_collector(
    tmp_path: Path, collector: tuple[str, _Receiver]
) -> None:
    endpoint, receiver = collector
    cfg = EdgeConfig.model_validate(
        {
            "device": {"id": "dev-7", "data_dir": str(tmp_path / "data")},
            "tools": {"load_entry_points": False},
            "sandbox": {"mode": "off"},
            "tracing": {"otlp_endpoint": endpoint},
        }
    )
    async with EdgeDaemon(
        cfg, brain=FakeBrain([act("remember", key="k", value=SECRET), act("finish", answer="ok")])
    ) as d:
        d.submit(GOAL)
        await d.run(until_idle=True)
    spans = [
        (resource.resource, span)
        for request in receiver.requests
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    assert sorted(span.name for _, span in spans).count("agent.step") == 2
    attributes = {a.key: a.value.string_value for a in spans[0][0].attributes}
    assert (attributes["service.name"], attributes["device.id"]) == ("edgehub-edge", "dev-7")
    assert SECRET not in str(receiver.requests)


async def test_a_hub_started_agent_resumed_after_a_restart_runs_in_the_hubs_trace_and_its_events_carry_it(
    tmp_path: Path, tracer: Tracer, exporter: InMemorySpanExporter
) -> None:
    """The traceparent the StartAgent command brought is kept in the agent's state: the daemon that
    opens the store next (a restart) runs it as the child of the hub's task span; each event it puts in
    the outbox keeps the context of the checkpoint that wrote it (what the publisher sends as headers)."""
    trace_id, task_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    state = new_agent("a1", GOAL)
    state.trace_parent = f"00-{trace_id}-{task_span}-01"
    first = SqliteStore.open(tmp_path / "edge.db", device_id="dev-1")
    first.create_agent(state)
    first.close()

    script = [act("write_file", path="a.txt", content="blue"), act("finish", answer="blue")]
    loop, store = make_loop(tmp_path, script, tracer)  # the same database, opened again
    assert (await loop.run("a1", asyncio.Event())).status == S.AGENT_STATUS_FINISHED
    spans = exporter.get_finished_spans()
    (root,) = named(spans, "agent.run")
    assert root.parent is not None
    parent = (format(root.parent.trace_id, "032x"), format(root.parent.span_id, "016x"))
    assert parent == (trace_id, task_span)
    assert {format(s.context.trace_id, "032x") for s in spans if s.context} == {trace_id}
    checkpoints = {format(s.context.span_id, "016x") for s in named(spans, "checkpoint") if s.context}
    sent = [e.traceparent.split("-") for e in store.outbox_pending()]
    assert sent
    assert all(parts[1] == trace_id and parts[2] in checkpoints for parts in sent)


async def test_an_untraced_agent_writes_no_trace_context_into_its_outbox(tmp_path: Path) -> None:
    loop, store = make_loop(tmp_path, [act("finish", answer="done")], None)
    await run(loop, store)
    assert [e.traceparent for e in store.outbox_pending()] == [""]
