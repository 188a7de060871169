"""The agent scheduler: ready agents run within max_concurrent, a held agent waits, a stopped one ends
STOPPED, and ``until_idle`` returns once nothing is left."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from edgehub.edge.scheduler import AgentScheduler
from edgehub.protocol.v1 import agent_pb2
from tests.harness.wait import eventually
from tests.unit.test_loop import act, make_loop

S = agent_pb2


def forever(prompt: str) -> str:
    """An agent that never finishes: one command a step (refused here: the loop has no sandbox)."""
    time.sleep(0.01)
    return json.dumps({"thought": "wait", "tool": "run_command", "args": {"command": "sleep 0.05"}})


async def test_ready_agents_run_until_idle_within_max_concurrent(tmp_path: Path) -> None:
    loop, store, _ = make_loop(tmp_path, [act("finish", answer="ok")] * 3)
    scheduler = AgentScheduler(store, loop, max_concurrent=2, poll_interval=0.01)
    ids = [scheduler.submit("g", agent_id=f"a{i}") for i in range(3)]
    scheduler.schedule()
    assert scheduler.running == ["a0", "a1"]  # the third waits for a free slot
    await asyncio.wait_for(scheduler.run(until_idle=True), 10)
    assert [store.load_agent(i).status for i in ids] == [S.AGENT_STATUS_FINISHED] * 3


async def test_a_held_agent_is_not_started_and_a_stopped_one_ends_stopped(tmp_path: Path) -> None:
    loop, store, _ = make_loop(tmp_path, forever, max_steps=10_000)  # type: ignore[arg-type]
    scheduler = AgentScheduler(store, loop, max_concurrent=4, poll_interval=0.01)
    scheduler.submit("g", agent_id="a1")
    async with scheduler.hold("a1"):
        scheduler.schedule()
        assert scheduler.running == []
        assert store.load_agent("a1").status == S.AGENT_STATUS_PENDING
    scheduler.schedule()
    assert scheduler.running == ["a1"]
    state = await asyncio.wait_for(scheduler.stop_agent("a1", "stopped by a test"), 10)
    assert (state.status, state.failure_reason) == (S.AGENT_STATUS_STOPPED, "stopped by a test")
    assert scheduler.running == []


async def test_request_stop_leaves_running_agents_resumable(tmp_path: Path) -> None:
    loop, store, _ = make_loop(tmp_path, forever, max_steps=10_000)  # type: ignore[arg-type]
    scheduler = AgentScheduler(store, loop, max_concurrent=4, poll_interval=0.01)
    scheduler.submit("g", agent_id="a1")
    runner = asyncio.create_task(scheduler.run())
    await eventually(lambda: store.mind_log("a1"), within=10, what="a step")
    scheduler.request_stop()
    await asyncio.wait_for(runner, 10)
    assert store.load_agent("a1").status == S.AGENT_STATUS_RUNNING  # a drain: it resumes on restart
