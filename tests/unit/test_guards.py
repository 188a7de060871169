"""Circuit breakers, rate limits and the stuck-loop monitor."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from edgehub.edge.agent.base import SeenStep
from edgehub.edge.agent.tools import ExecutionGateway, ToolContext, ToolOutput, ToolRegistry, ToolSpec
from edgehub.edge.safety import Breakers, RateLimits, StuckMonitor, StuckSettings
from edgehub.edge.safety.stuck import MAX_CALLS, gives_reason
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
    verdict = monitor.observe(guard, SeenStep(thought, call, failed))
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


ECHO = 'run_command {"command": "echo 42 >> log.txt"}'


def ran(
    monitor: StuckMonitor, guard: agent_pb2.Guard, call: str, step: int, output: str = "exit status 0"
) -> tuple[str, agent_pb2.Guard]:
    """A step whose call ran and succeeded."""
    verdict = monitor.observe(
        guard, SeenStep(f"step {step}", call, False, step, call.split()[0], ran=True, output=output)
    )
    return verdict.action, verdict.guard


def test_a_repeat_of_a_call_that_is_not_repeatable_is_refused_with_what_the_first_run_returned() -> None:
    monitor = StuckMonitor()
    _, guard = ran(monitor, S.Guard(), ECHO, 0, "exit status 0\n42")
    refusal = monitor.refusal(guard, "run_command", ECHO, repeatable=False, thought="append 42")
    assert refusal is not None
    assert refusal.error == "repeated"
    assert "already ran this exact call at step 1" in refusal.reason
    assert "42" in refusal.reason
    other = 'run_command {"command": "echo 43 >> log.txt"}'
    assert monitor.refusal(guard, "run_command", other, repeatable=False, thought="go") is None
    assert monitor.refusal(guard, "run_command", ECHO, repeatable=True, thought="go") is None
    reason = "run it again because the first run was before log.txt was rotated"
    assert monitor.refusal(guard, "run_command", ECHO, repeatable=False, thought=reason) is None
    denied = monitor.observe(guard, SeenStep("x", other, True, 1, "run_command", ran=False)).guard
    assert monitor.refusal(denied, "run_command", other, repeatable=False, thought="x") is None


def test_with_refuse_repeats_off_a_repeat_runs_and_only_same_calls_counts_it() -> None:
    monitor = StuckMonitor(StuckSettings(same_calls=3, refuse_repeats=False))
    guard = S.Guard()
    actions = []
    for step in range(3):
        assert monitor.refusal(guard, "run_command", ECHO, repeatable=False, thought="append 42") is None
        action, guard = ran(monitor, guard, ECHO, step)
        actions.append(action)
    assert actions == ["ok", "ok", "warn"]
    assert guard.calls[-1].count == 3


@pytest.mark.parametrize(
    ("thought", "reason"),
    [
        ("Run it again because the file changed since.", True),
        ("retry, since the network was down", True),
        ("Append 42 to log.txt again.", False),
        ("Because the goal says so, append 42.", False),
        ("", False),
    ],
)
def test_only_a_thought_that_says_why_it_runs_again_is_a_reason(thought: str, reason: bool) -> None:
    assert gives_reason(thought) is reason


def test_a_refused_repeat_warns_and_withholds_its_tool_for_one_step_then_stops() -> None:
    monitor = StuckMonitor()
    _, guard = ran(monitor, S.Guard(), ECHO, 0)
    refused = SeenStep("append 42", ECHO, True, 1, "run_command", refused=True)
    verdict = monitor.observe(guard, refused)
    assert verdict.action == "warn"
    assert verdict.reason.startswith("repeated a call that already ran (run_command")
    guard = verdict.guard
    assert (guard.excluded_tool, guard.excluded_call) == ("run_command", ECHO)
    assert "run_command is not offered in your next step" in guard.warning
    withheld = monitor.refusal(guard, "run_command", "run_command {}", repeatable=False, thought="x")
    assert withheld is not None
    assert withheld.error == "withheld"
    action, guard = ran(monitor, guard, 'read_file {"path": "log.txt"}', 2)
    assert action == "ok"
    assert guard.excluded_tool == ""
    assert guard.warning == ""
    final = monitor.observe(guard, SeenStep("append 42", ECHO, True, 3, "run_command", refused=True))
    assert final.action == "stop"
    assert final.reason.startswith("stuck: repeated a call that already ran (run_command")
    assert "made 3 times" in final.reason
    assert [(c.call, c.count, c.ran_step) for c in final.guard.calls][-1] == (ECHO, 3, 0)


def test_the_same_successful_call_is_counted_over_the_agent_life_then_warns_then_stops() -> None:
    monitor = StuckMonitor(StuckSettings(same_calls=3))
    read = 'read_file {"path": "a.txt"}'
    calls = [read if i % 2 == 0 else f'read_file {{"path": "{i}.txt"}}' for i in range(7)]
    actions = []
    guard = S.Guard()
    for step, call in enumerate(calls):
        action, guard = ran(monitor, guard, call, step)
        actions.append(action)
    assert actions == ["ok", "ok", "ok", "ok", "warn", "ok", "stop"]
    assert guard.calls[-1].count == 4


def test_failing_calls_and_calls_that_never_ran_are_not_counted_as_repeats() -> None:
    monitor = StuckMonitor(StuckSettings(same_calls=2, failing_repeats=10))
    guard = S.Guard()
    for step in range(4):
        seen = SeenStep("read it", 'read_file {"path": "no.txt"}', True, step, "read_file", ran=True)
        verdict = monitor.observe(guard, seen)
        assert verdict.action == "ok"
        guard = verdict.guard
    for step in range(4, 8):
        seen = SeenStep("x", ECHO, True, step, "run_command", ran=False)  # denied by policy
        guard = monitor.observe(guard, seen).guard
    assert [c.call for c in guard.calls] == ['read_file {"path": "no.txt"}']
    assert monitor.refusal(guard, "run_command", ECHO, repeatable=False, thought="x") is None


def test_the_guard_remembers_a_bounded_number_of_calls_most_recent_first_kept() -> None:
    monitor = StuckMonitor()
    guard = S.Guard()
    for step in range(MAX_CALLS + 10):
        _, guard = ran(monitor, guard, f'run_command {{"command": "echo {step}"}}', step)
    assert len(guard.calls) == MAX_CALLS
    assert guard.calls[0].call == 'run_command {"command": "echo 10"}'
    restored = S.Guard.FromString(guard.SerializeToString())  # what a checkpoint keeps
    last = f'run_command {{"command": "echo {MAX_CALLS + 9}"}}'
    assert monitor.refusal(restored, "run_command", last, repeatable=False, thought="x") is not None
