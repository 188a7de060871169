"""Agent migration through a real hub (subprocess, embedded nats-server, its device API over mutual
TLS) between two enrolled edge daemons: the agent stops at a step boundary on the source, resumes at
the same step on the target with epoch + 1, and its trace has no gap and no duplicate. Then the fence:
a stale copy's event is dead-lettered and never moves the record; a stale command is refused.

The edges' brain here is scripted (``FakeBrain``): what is under test is the hand-over, which needs an
agent that takes a known number of steps; tests/integration/test_agent_real_model.py covers the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import nats
from nats.js.errors import NotFoundError

from edgehub.edge.app import EdgeDaemon
from edgehub.edge.config import EdgeConfig
from edgehub.llm.fake import FakeBrain
from edgehub.protocol import subjects
from edgehub.protocol.v1 import agent_pb2
from edgehub.sync.commands import new_command, send_command
from tests.harness.hub import Hub, start_hub
from tests.harness.wait import eventually

S = agent_pb2
T = TypeVar("T")
STEPS = 12
"""The scripted agent finishes in its 12th step (step 11: the prompt counts from 1)."""


def brain(prompt: str) -> str:
    step = int(re.findall(r"Step (\d+) action: $", prompt)[-1]) if prompt.endswith("action: ") else 0
    if step >= STEPS:
        return json.dumps({"thought": "done", "tool": "finish", "args": {"answer": "counted"}})
    # a command of its own each step: an identical repeat would be refused (not repeatable)
    command = f"sleep 1; echo {step}"
    return json.dumps({"thought": f"count {step}", "tool": "run_command", "args": {"command": command}})


def edge_config(tmp_path: Path, device: str) -> EdgeConfig:
    return EdgeConfig.model_validate(
        {
            "device": {"id": device, "data_dir": str(tmp_path / device)},
            "tools": {"load_entry_points": False},
            "safety": {"stuck_warnings": 100, "failing_repeats": 100},
            "hub": {"heartbeat_s": 0.5},
        }
    )


@contextlib.asynccontextmanager
async def running(daemon: EdgeDaemon) -> AsyncIterator[EdgeDaemon]:
    async with daemon:
        task = asyncio.create_task(daemon.run())
        try:
            yield daemon
        finally:
            daemon.request_stop()
            await task


async def enroll_both(hub: Hub, tmp_path: Path) -> None:
    """Once the hub's API is up: dev-a and dev-b enrolled, their data in ``tmp_path / <device>``."""
    await asyncio.to_thread(hub.wait_ready)
    for device in ("dev-a", "dev-b"):
        enrolled = await asyncio.to_thread(hub.enroll, device, tmp_path / device)
        assert enrolled.returncode == 0, enrolled.stderr


def trace(hub: Hub, agent_id: str) -> list[dict[str, object]]:
    done = hub.cli("agents", "trace", agent_id, "--json")
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


async def until(probe: Callable[[], Awaitable[T]], within: float, what: str) -> T:
    """``eventually`` for a probe that awaits (an API call in a thread, a NATS read)."""
    deadline = asyncio.get_running_loop().time() + within
    while not (last := await probe()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {within:g} s waiting for {what}: last saw {last!r}")
        await asyncio.sleep(0.2)
    return last


async def dead_letter_reason(url: str, hub: Hub, subject: str) -> str:
    nc = await nats.connect(url, user_credentials=hub.creds())
    try:
        msg = await nc.jetstream().get_last_msg(subjects.DEADLETTER_STREAM, subject)
        return (msg.headers or {}).get("Edgehub-Reason", "")
    except NotFoundError:
        return ""
    finally:
        await nc.close()


async def test_an_agent_migrates_mid_goal_and_finishes_on_the_target_with_no_step_lost_or_repeated(
    tmp_path: Path,
) -> None:
    hub = start_hub(tmp_path, "hub-mig")
    try:
        await enroll_both(hub, tmp_path)
        a_cfg, b_cfg = edge_config(tmp_path, "dev-a"), edge_config(tmp_path, "dev-b")
        async with (
            running(EdgeDaemon(a_cfg, brain=FakeBrain(brain))) as a,
            running(EdgeDaemon(b_cfg, brain=FakeBrain(brain))) as b,
        ):
            assert a.store is not None
            assert b.store is not None
            a_store, b_store = a.store, b.store
            started = await asyncio.to_thread(
                hub.cli, "agents", "start", "-d", "dev-a", "-g", "count", "--agent-id", "mover"
            )
            assert started.returncode == 0, started.stderr
            await eventually(
                lambda: a_store.has_agent("mover") and a_store.load_agent("mover").usage.steps >= 3,
                within=60,
                what="three steps on the source",
            )
            moved = await asyncio.to_thread(
                hub.cli, "agents", "migrate", "mover", "--to", "dev-b", "--json", timeout=120
            )
            assert moved.returncode == 0, moved.stdout + moved.stderr
            migration = json.loads(moved.stdout)
            assert migration["phase"] == "MIGRATION_PHASE_DONE", migration
            assert (migration["from_epoch"], migration["to_epoch"]) in (("0", "1"), (0, 1))
            handed_at = int(migration["step"])
            assert 3 <= handed_at < STEPS

            left = a_store.load_agent("mover")
            assert left.status == S.AGENT_STATUS_MIGRATED
            assert (left.migrated_to, left.step) == ("dev-b", handed_at)
            await eventually(
                lambda: b_store.load_agent("mover").status == S.AGENT_STATUS_FINISHED,
                within=60,
                what="the agent to finish on the target",
            )
            finished = b_store.load_agent("mover")
            assert finished.epoch == 1
            assert finished.answer == "counted"
            assert a_store.load_agent("mover").status == S.AGENT_STATUS_MIGRATED  # never ran again

            async def complete() -> list[dict[str, object]] | None:
                events = await asyncio.to_thread(trace, hub, "mover")
                return events if any(e["status"] == "AGENT_STATUS_FINISHED" for e in events) else None

            events = await until(complete, within=60, what="the whole trace at the hub")
            actions = [e for e in events if e["kind"] == "STEP_KIND_ACTION"]
            steps = [int(str(e["step"])) for e in actions]
            assert steps == list(range(STEPS)), steps  # no gap, no duplicate, in order
            for e in actions:
                before = int(str(e["step"])) < handed_at
                assert e["device_id"] == ("dev-a" if before else "dev-b"), e
                assert int(str(e.get("epoch", 0))) == (0 if before else 1), e

            record = json.loads((await asyncio.to_thread(hub.cli, "agents", "get", "mover")).stdout)
            assert (record["device_id"], int(record["epoch"]), record["status"]) == (
                "dev-b",
                1,
                "AGENT_STATUS_FINISHED",
            )

            # the fence: the source's stale copy writes a step after the hand-over: refused
            stale = a_store.load_agent("mover")
            stale.epoch, stale.step = 0, STEPS + 5
            step = S.StepEvent(
                schema_version=1,
                event_id=f"mover/0/{STEPS + 5}/action",
                agent_id="mover",
                device_id="dev-a",
                epoch=0,
                step=STEPS + 5,
                kind=S.STEP_KIND_ACTION,
                status=S.AGENT_STATUS_RUNNING,
            )
            a_store.checkpoint(stale, step, [])
            reason = await until(
                lambda: dead_letter_reason(hub.url, hub, subjects.deadletter("events")),
                within=30,
                what="the stale event in the dead letters",
            )
            assert "fenced: stale epoch" in reason, reason
            record = json.loads((await asyncio.to_thread(hub.cli, "agents", "get", "mover")).stdout)
            assert (record["device_id"], record["status"]) == ("dev-b", "AGENT_STATUS_FINISHED")
            later = await asyncio.to_thread(trace, hub, "mover")
            assert all(int(str(e["step"])) != STEPS + 5 for e in later)

            # and a command with an older epoch than the target's copy is refused there
            nc = await nats.connect(hub.url, user_credentials=hub.creds())
            cmd = new_command("dev-b", "test")
            cmd.epoch = 0
            cmd.stop_agent.agent_id, cmd.stop_agent.reason = "mover", "from a stale view"
            await send_command(nc.jetstream(), cmd)
            await nc.close()
            reason = await until(
                lambda: dead_letter_reason(hub.url, hub, subjects.device_deadletter("dev-b")),
                within=30,
                what="the stale command in dev-b's dead letters",
            )
            assert "stale command for mover: epoch 0, this device has 1" in reason
            assert b_store.load_agent("mover").status == S.AGENT_STATUS_FINISHED
    finally:
        hub.stop()


async def test_a_migration_the_source_cannot_give_fails_and_nothing_moves(tmp_path: Path) -> None:
    """The agent finished on the source before the migration reached it: the source refuses, the
    migration fails with the reason, and the agent stays where it is."""
    hub = start_hub(tmp_path, "hub-mig-f")
    try:
        await enroll_both(hub, tmp_path)
        async with (
            running(EdgeDaemon(edge_config(tmp_path, "dev-a"), brain=FakeBrain(brain))) as a,
            running(EdgeDaemon(edge_config(tmp_path, "dev-b"), brain=FakeBrain(brain))),
        ):
            assert a.store is not None
            a_store = a.store
            await asyncio.to_thread(
                hub.cli, "agents", "start", "-d", "dev-a", "-g", "count", "--agent-id", "stayer"
            )
            await eventually(lambda: a_store.has_agent("stayer"), within=30)

            async def known_running() -> bool:  # the hub has its record (its first step arrived)
                got = await asyncio.to_thread(hub.cli, "agents", "get", "stayer")
                return got.returncode == 0 and json.loads(got.stdout)["status"] == "AGENT_STATUS_RUNNING"

            await until(known_running, within=30, what="the hub to see the agent running")
            # hold the agent so the hub still sees it running, finish it behind the hub's back
            async with a.parts.scheduler.hold("stayer"):
                state = a_store.load_agent("stayer")
                state.status = S.AGENT_STATUS_FINISHED
                a_store.update_agent(state)
            moved = await asyncio.to_thread(
                hub.cli, "agents", "migrate", "stayer", "--to", "dev-b", "--json", timeout=120
            )
            assert moved.returncode == 1, moved.stdout + moved.stderr
            migration = json.loads(moved.stdout)
            assert migration["phase"] == "MIGRATION_PHASE_FAILED"
            assert "is AGENT_STATUS_FINISHED here" in migration["error"]
            assert a_store.load_agent("stayer").status == S.AGENT_STATUS_FINISHED
            again = await asyncio.to_thread(hub.cli, "agents", "migrate", "stayer", "--to", "dev-a")
            assert again.returncode == 1
            assert "already runs on dev-a" in again.stderr or "only an active one" in again.stderr
    finally:
        hub.stop()


def test_migrate_refuses_unknown_agents_and_devices_with_clear_errors(tmp_path: Path) -> None:
    hub = start_hub(tmp_path, "hub-mig-e")
    try:
        hub.wait_ready()
        unknown = hub.cli("agents", "migrate", "ghost", "--to", "dev-b")
        assert unknown.returncode == 1
        assert "not_found: no agent 'ghost'" in unknown.stderr
        missing = hub.cli("agents", "migration", "ghost")
        assert missing.returncode == 1
        assert "was never migrated" in missing.stderr
    finally:
        hub.stop()
