"""The execution gateway: every call validated, admitted, recorded before running, never repeated."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from edgehub.edge.agent.tools import (
    Decision,
    ExecutionGateway,
    FunctionTool,
    ToolContext,
    ToolOutput,
    ToolRegistry,
    ToolSpec,
)
from edgehub.edge.store import Intent, SqliteStore
from edgehub.protocol.v1 import agent_pb2

S = agent_pb2


class Counter:
    """A tool whose side effect is counted."""

    def __init__(self, name: str, *, idempotent: bool, behaviour: str = "ok") -> None:
        self.calls = 0
        self.behaviour = behaviour
        schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
        self.spec = ToolSpec(name, "counts", schema, idempotent=idempotent, timeout_s=0.5)

    async def __call__(self, args: dict[str, object], ctx: ToolContext) -> ToolOutput:
        self.calls += 1
        if self.behaviour == "raise":
            raise RuntimeError("boom")
        if self.behaviour == "hang":
            await asyncio.sleep(10)
        return ToolOutput("x" * 100 if self.behaviour == "long" else f"called {self.calls}")


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    return SqliteStore.open(tmp_path / "e.db", device_id="d")


def ctx(tmp_path: Path, store: SqliteStore, step: int = 0) -> ToolContext:
    return ToolContext("a1", step, f"a1/{step}", tmp_path, store)


def call(tool: str, args: object) -> agent_pb2.ToolCall:
    return S.ToolCall(tool=tool, args_json=args if isinstance(args, str) else json.dumps(args))


async def run(gw: ExecutionGateway, c: agent_pb2.ToolCall, cx: ToolContext) -> agent_pb2.ToolResult:
    result, _ = await gw.execute(c, cx, proposal_json="{}")
    return result


@pytest.mark.parametrize(
    ("c", "error"),
    [
        (call("nope", {"n": 1}), "unknown_tool"),
        (call("count", "{not json"), "invalid_args"),
        (call("count", "[1, 2]"), "invalid_args"),
        (call("count", {"n": "one"}), "invalid_args"),
        (call("count", {}), "invalid_args"),
    ],
)
async def test_bad_calls_become_error_results_and_run_nothing(
    tmp_path: Path, store: SqliteStore, c: agent_pb2.ToolCall, error: str
) -> None:
    tool = Counter("count", idempotent=False)
    gw = ExecutionGateway(ToolRegistry([tool]), store, observation_limit=50)
    result = await run(gw, c, ctx(tmp_path, store))
    assert (result.ok, result.error) == (False, error)
    assert tool.calls == 0
    assert store.get_intent("a1/0") is None


@pytest.mark.parametrize(("behaviour", "error"), [("raise", "tool_error"), ("hang", "timeout")])
async def test_failing_tools_become_error_results(
    tmp_path: Path, store: SqliteStore, behaviour: str, error: str
) -> None:
    gw = ExecutionGateway(
        ToolRegistry([Counter("count", idempotent=True, behaviour=behaviour)]), store, observation_limit=50
    )
    result = await run(gw, call("count", {"n": 1}), ctx(tmp_path, store))
    assert (result.ok, result.error) == (False, error)


async def test_long_output_is_truncated_with_a_note(tmp_path: Path, store: SqliteStore) -> None:
    gw = ExecutionGateway(
        ToolRegistry([Counter("count", idempotent=True, behaviour="long")]), store, observation_limit=50
    )
    result = await run(gw, call("count", {"n": 1}), ctx(tmp_path, store))
    assert result.output.startswith("x" * 50)
    assert "50 more characters truncated" in result.output


async def test_intent_is_recorded_before_the_tool_runs(tmp_path: Path, store: SqliteStore) -> None:
    seen: list[Intent | None] = []

    async def spy(args: dict[str, object], cx: ToolContext) -> ToolOutput:
        seen.append(store.get_intent(cx.idempotency_key))
        return ToolOutput("ok")

    tool = FunctionTool(ToolSpec("spy", "s", {"type": "object"}, idempotent=False), spy)
    gw = ExecutionGateway(ToolRegistry([tool]), store, observation_limit=50)
    await gw.execute(call("spy", {}), ctx(tmp_path, store), proposal_json='{"raw": "p"}')
    assert seen[0] is not None
    assert seen[0].proposal_json == '{"raw": "p"}'


async def test_a_recorded_result_is_replayed_not_rerun(tmp_path: Path, store: SqliteStore) -> None:
    tool = Counter("count", idempotent=False)
    store.begin_intent(Intent("a1/0", "a1", 0, "count", "{}", "{}", None))
    store._conn.execute(
        "UPDATE intents SET result = ? WHERE key = 'a1/0'",
        (S.ToolResult(ok=True, output="first time").SerializeToString(),),
    )
    gw = ExecutionGateway(ToolRegistry([tool]), store, observation_limit=50)
    result = await run(gw, call("count", {"n": 1}), ctx(tmp_path, store))
    assert (result.replayed, result.output, tool.calls) == (True, "first time", 0)


@pytest.mark.parametrize(("idempotent", "calls", "error"), [(False, 0, "interrupted"), (True, 1, "")])
async def test_an_interrupted_call_is_rerun_only_if_idempotent(
    tmp_path: Path, store: SqliteStore, idempotent: bool, calls: int, error: str
) -> None:
    tool = Counter("count", idempotent=idempotent)
    store.begin_intent(Intent("a1/0", "a1", 0, "count", "{}", "{}", None))
    gw = ExecutionGateway(ToolRegistry([tool]), store, observation_limit=50)
    result = await run(gw, call("count", {"n": 1}), ctx(tmp_path, store))
    assert (tool.calls, result.error) == (calls, error)


class DenyAll:
    async def admit(
        self, call: agent_pb2.ToolCall, spec: ToolSpec, args: dict[str, object], ctx: ToolContext
    ) -> Decision | None:
        return Decision("deny", "not on the allow list", rule="deny-all")


async def test_a_denying_admission_check_prevents_the_run(tmp_path: Path, store: SqliteStore) -> None:
    tool = Counter("count", idempotent=False)
    gw = ExecutionGateway(ToolRegistry([tool]), store, observation_limit=80, admissions=[DenyAll()])
    result = await run(gw, call("count", {"n": 1}), ctx(tmp_path, store))
    assert (result.error, tool.calls) == ("denied", 0)
    assert "deny-all" in result.output
    assert store.get_intent("a1/0") is None


async def test_an_idempotent_call_needs_no_durable_intent(tmp_path: Path, store: SqliteStore) -> None:
    tool = Counter("count", idempotent=True)
    gw = ExecutionGateway(ToolRegistry([tool]), store, observation_limit=50)
    result = await run(gw, call("count", {"n": 1}), ctx(tmp_path, store))
    assert result.ok
    assert tool.calls == 1
    assert store.get_intent("a1/0") is None
