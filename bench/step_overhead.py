"""bench/step_overhead: the cost of one agent step besides decoding and the tool's own work.

edgehub: ``AgentLoop.step`` with the real store (SQLite WAL, synchronous=FULL), the real registry and
execution gateway (schema validation, durable intent record), the real prompt builder and the real
Gemma tokenizer (loaded vocab-only) for token counts. The model's decoding is excluded by design: a
scripted brain (``edgehub.llm.fake``) returns the action at once. The tool is an in-process no-op
measured twice: idempotent (the common in-process case) and non-idempotent, where a durable intent
(one more fsync'd commit) is recorded before it runs, as for any side-effecting tool.

LangGraph: the same loop shape as a ``StateGraph`` (agent node proposing the same scripted action,
tools node running the same no-op), compiled with ``SqliteSaver`` on a file with WAL and
synchronous=FULL set on its connection (LangGraph sets WAL itself; FULL is set for parity) and
``durability="sync"`` (each checkpoint written before the next step, as edgehub does). One step is
one agent + tools round, i.e. two super-steps and two checkpoints: that is how LangGraph persists.

Both carry the same state: a 2 KB working summary plus the growing list of turns (same texts).
Targets: edgehub p50 <= 5 ms, and edgehub per-step cost <= 0.5 x LangGraph's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import operator
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parent))

import itertools

from common import QUICK, Check, median, pct, print_checks, print_table, write_result
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from llama_cpp import Llama

from edgehub.edge.agent.loop import AgentLoop, LoopDeps, new_agent
from edgehub.edge.agent.tools import (
    ExecutionGateway,
    FunctionTool,
    ToolContext,
    ToolOutput,
    ToolRegistry,
    ToolSpec,
)
from edgehub.edge.config import AgentConfig, ToolsConfig
from edgehub.edge.memory.compaction import Compactor
from edgehub.edge.store.sqlite import SqliteStore
from edgehub.llm import default_model_path
from edgehub.llm.fake import FakeBrain
from edgehub.llm.gate import ModelGate
from edgehub.protocol.v1 import agent_pb2

STEPS = 60 if QUICK else 300
WARMUP = 5
SUMMARY = ("The agent is tidying the logs folder; so far it found app, worker and audit logs. " * 25)[:2048]
ACTION = json.dumps({"thought": "Count once more.", "tool": "noop", "args": {"n": 1}})
OBSERVATION = "counted 1"


async def noop(args: dict[str, Any], ctx: ToolContext | None = None) -> ToolOutput:
    return ToolOutput(OBSERVATION)


NOOP_SPEC = ToolSpec(
    "noop",
    "Count once.",
    {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
    idempotent=False,
)


def tokenizer() -> Any:
    vocab = Llama(model_path=str(default_model_path()), vocab_only=True, verbose=False)
    return lambda text: len(vocab.tokenize(text.encode(), add_bos=False, special=False))


async def edgehub_steps(tmp: Path, count_tokens: Any, *, idempotent: bool) -> list[float]:
    store = SqliteStore.open(tmp / "edge.db", device_id="bench")
    brain = FakeBrain(lambda prompt: ACTION, n_ctx=10_000_000, count=count_tokens)
    registry = ToolRegistry.default(ToolsConfig(load_entry_points=False))
    registry.register(FunctionTool(dataclasses.replace(NOOP_SPEC, idempotent=idempotent), noop))
    cfg = AgentConfig(max_steps=10**6, max_tool_calls=10**6, max_tokens=10**12)
    deps = LoopDeps(
        store=store,
        registry=registry,
        gateway=ExecutionGateway(registry, store, observation_limit=600),
        model=ModelGate(brain),
        count_tokens=count_tokens,
        compactor=Compactor(brain),
        cfg=cfg,
        device_id="bench",
        workspaces=tmp / "ws",
        n_ctx=brain.n_ctx,
        max_action_tokens=64,
    )
    loop = AgentLoop(deps)
    state = new_agent("bench", "Tidy the logs folder.")
    state.summary = SUMMARY
    state.status = agent_pb2.AGENT_STATUS_RUNNING
    store.create_agent(state)
    times = []
    for _ in range(STEPS + WARMUP):
        t = time.perf_counter()
        state = await loop.step(state)
        times.append((time.perf_counter() - t) * 1000)
    assert state.step == STEPS + WARMUP
    assert len(store.mind_log("bench", limit=10**6)) == STEPS + WARMUP
    store.close()
    return times[WARMUP:]


class GraphState(TypedDict):
    summary: str
    turns: Annotated[list[str], operator.add]
    step: int


def langgraph_steps(tmp: Path) -> list[float]:
    def agent(state: GraphState) -> dict[str, Any]:
        return {"turns": [ACTION]}

    def tools(state: GraphState) -> dict[str, Any]:  # the same no-op, without edgehub's gateway
        out = asyncio.run(noop(json.loads(state["turns"][-1])["args"]))
        return {"turns": [out.output], "step": state["step"] + 1}

    graph = StateGraph(GraphState)
    graph.add_node("agent", agent)
    graph.add_node("tools", tools)
    graph.add_edge(START, "agent")
    graph.add_edge("agent", "tools")
    graph.add_conditional_edges("tools", lambda s: END if s["step"] >= STEPS + WARMUP else "agent")
    conn = sqlite3.connect(tmp / "langgraph.db", check_same_thread=False)
    saver = SqliteSaver(conn)
    saver.setup()
    conn.execute("PRAGMA synchronous=FULL")
    app = graph.compile(checkpointer=saver)
    config = {"configurable": {"thread_id": "bench"}, "recursion_limit": 10 * (STEPS + WARMUP)}
    marks = [time.perf_counter()]
    start = {"summary": SUMMARY, "turns": [], "step": 0}
    # durability="sync": each checkpoint is written before the next step starts, as edgehub commits
    # every step before the next (LangGraph's default "async" writes in a background thread)
    for update in app.stream(start, config, stream_mode="updates", durability="sync"):
        if "tools" in update:
            marks.append(time.perf_counter())
    conn.close()
    times = [(b - a) * 1000 for a, b in itertools.pairwise(marks)]
    assert len(times) == STEPS + WARMUP
    return times[WARMUP:]


def state_bytes(tmp: Path) -> int:
    store = SqliteStore.open(tmp / "edge.db", device_id="bench")
    state = store.load_agent("bench").SerializeToString()
    turns = sum(len(t.text) for t in store.turns("bench"))
    store.close()
    return len(state) + turns


def main() -> None:
    count_tokens = tokenizer()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ours = asyncio.run(edgehub_steps(tmp / "a", count_tokens, idempotent=True))
        ours_intent = asyncio.run(edgehub_steps(tmp / "b", count_tokens, idempotent=False))
        theirs = langgraph_steps(tmp)
        size = state_bytes(tmp / "a")
    rows = []
    sides = (
        ("edgehub, idempotent tool", ours),
        ("edgehub, non-idempotent tool (+ durable intent)", ours_intent),
        ("LangGraph + SqliteSaver", theirs),
    )
    for name, t in sides:
        rows.append([name, f"{median(t):.2f}", f"{pct(t, 99):.2f}", f"{sum(t) / len(t):.2f}"])
    print_table(
        f"per-step overhead, {STEPS} steps (decoding excluded), final state ~{size / 1024:.0f} KB",
        ["side", "p50 ms", "p99 ms", "mean ms"],
        rows,
    )
    p50, worst = median(ours), median(ours_intent)
    ratio = max(p50, worst) / median(theirs)  # the worse of the two tool kinds
    checks = [
        Check("step_overhead_p50_ms", p50, "ms", "<= 5", p50 <= 5.0),
        Check("step_overhead_p50_ms_non_idempotent_tool", worst, "ms", "<= 5", worst <= 5.0),
        Check("edgehub_vs_langgraph_per_step_p50", ratio, "x", "<= 0.5", ratio <= 0.5),
    ]
    print_checks(checks)
    print(f"wrote {write_result('step_overhead', checks)}")


if __name__ == "__main__":
    main()
