"""Circuit breakers, rate limits and the stuck-loop monitor."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from edgehub.edge.agent.tools import ExecutionGateway, ToolContext, ToolOutput, ToolRegistry, ToolSpec
from edgehub.edge.safety import Breakers, RateLimits, StuckMonitor, StuckSettings
from edgehub.edge.store import SqliteStore
from edgehub.protocol.v1 import agent_pb2

S = agent_pb2


class Flaky:
    """Fails while ``failing`` is set; counts real runs."""

    def __init__(self) -> None:
        self.failing = True
        self.runs = 0
        self.spec = ToolSpec("flaky", "x", {"type": "object"}, idempotent=True)

    async def __call__(self, args: dict[str, object], ctx: ToolContext) -> ToolOutput:
        self.runs += 1
        if self.failing:
            raise ConnectionError("upstream down")
        return ToolOutput("fine")


async def _call(gw: ExecutionGateway, tmp_path: Path, store: SqliteStore, step: int) -> agent_pb2.ToolResult:
    ctx = ToolContext("a1", step, f"a1/{step}", tmp_path, store)
    result, _ = await gw.execute(S.ToolCall(tool="flaky", args_json="{}"), ctx, proposal_json="{}")
    return result


async def test_the_breaker_opens_after_repeated_failures_and_recovers_after_the_cool_down(
    tmp_path: Path,
) -> None:
    store = SqliteStore.open(tmp_path / "e.db", device_id="d")
    tool = Flaky()
    gw = ExecutionGateway(ToolRegistry([tool]), store, observation_limit=300, interceptors=[Breakers(3, 0.3)])
    errors = [(await _call(gw, tmp_path, store, i)).error for i in range(5)]
    assert errors == ["tool_error"] * 3 + ["circuit_open"] * 2
    assert tool.runs == 3  # an open circuit does not run the tool
    tool.failing = False
    await asyncio.sleep(0.35)  # cool-down over: half-open lets one call through
    assert (await _call(gw, tmp_path, store, 5)).ok
    assert (await _call(gw, tmp_path, store, 6)).ok  # closed again
    assert tool.runs == 5


async def test_the_rate_limit_refuses_calls_beyond_the_rate_without_running_them(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path / "e.db", device_id="d")
    tool = Flaky()
    tool.failing = False
    gw = ExecutionGateway(
        ToolRegistry([tool]), store, observation_limit=300, admissions=[RateLimits({"flaky": 2}, None)]
    )
    results = [await _call(gw, tmp_path, store, i) for i in range(3)]
    assert [r.error for r in results] == ["", "", "rate_limited"]
    assert "limited to 2 calls per minute" in results[2].output
    assert results[2].decision.rule == "rate-limit"
    assert tool.runs == 2


def _observe(
    monitor: StuckMonitor, guard: agent_pb2.Guard, thought: str, call: str, failed: bool
) -> tuple[str, agent_pb2.Guard]:
    verdict = monitor.observe(guard, thought, call, failed)
    return verdict.action, verdict.guard


def test_near_identical_thoughts_warn_then_stop() -> None:
    monitor = StuckMonitor(StuckSettings(similarity=0.9, similar_steps=3, max_warnings=1))
    guard = S.Guard()
    actions = []
    for i, mark in enumerate(".!..?"):
        action, guard = _observe(monitor, guard, f"I should list the files again now{mark}", f"c{i}", False)
        actions.append(action)
    assert actions == ["ok", "ok", "warn", "ok", "stop"]
    assert guard.warnings == 1


def test_the_same_failing_call_repeated_warns_then_stops_but_different_thoughts_do_not() -> None:
    monitor = StuckMonitor(StuckSettings(failing_repeats=2, max_warnings=1))
    guard = S.Guard()
    call = 'read_file {"path": "missing.txt"}'
    actions = []
    for thought in ("try it", "again", "once more", "and again"):
        action, guard = _observe(monitor, guard, thought, call, True)
        actions.append(action)
    assert actions == ["ok", "warn", "ok", "stop"]
    varied = S.Guard()
    for i, thought in enumerate(["read the file", "write a summary", "count the words", "finish up"]):
        action, varied = _observe(monitor, varied, thought, json.dumps({"n": i}), False)
        assert action == "ok"


def test_the_hashing_embedder_scores_paraphrase_below_repetition() -> None:
    m = StuckMonitor()
    same = m.similarity("I will read leaf.txt to see the word.", "I will read leaf.txt to see the word!")
    other = m.similarity("I will read leaf.txt to see the word.", "Finish with the answer green.")
    assert same > 0.95 > other
