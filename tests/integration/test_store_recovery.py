"""A store that went back in time on an enrolled device, checked against what the hub holds: the hub's
applied outbox sequence catches an old copy of the database put back *together with its watermark*
(which the watermark alone cannot), the daemon runs restricted instead of refusing to start (its twin
says why, no agent runs, nothing repeats), and ``edge doctor --store --recover-from-hub`` brings the
outbox past the hub's sequence and stops the agent whose lost steps the hub saw, so the daemon resumes
without repeating a side effect the hub was told of.

Everything is real: the hub daemon with its NATS server (``tests.harness.hub``), enrollment, the edge
daemon in its own process (``tests.harness.edge_proc``: the real store, loop, sandbox and tools) with a
scripted brain whose every step appends its number to ``tally.txt`` through ``run_command``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from edgehub.edge.agent.loop import new_agent
from edgehub.edge.store.sqlite import SqliteStore
from edgehub.protocol.v1 import agent_pb2, hub_pb2, hub_pb2_grpc, twin_pb2
from tests.harness.cli import edgehub
from tests.harness.edge_proc import agent_state, start_edge, stop_edges
from tests.harness.hub import Hub, start_hub
from tests.harness.wait import assert_eventually

S = agent_pb2
STEPS = 30
"""The scripted agent appends 1 to 29, then finishes (the prompt numbers steps from 1); the tests kill
it long before."""
SCRIPT = "tests.integration.test_store_recovery:brain"
DEVICE = "dev-r"
AGENT = "tally-r"
FILES = ("edge.db", "edge.db-wal", "edge.db.watermark")
WIDE = {"COLUMNS": "250"}
"""Tables as wide as their rows: a cell is not folded over lines."""


def brain(prompt: str) -> str:
    step = int(re.findall(r"Step (\d+) action: $", prompt)[-1]) if prompt.endswith("action: ") else 0
    if step >= STEPS:
        return json.dumps({"thought": "done", "tool": "finish", "args": {"answer": "counted"}})
    # from the third on, a second a step: time for the hub to apply each before the next is done
    command = f"{'sleep 1; ' if step >= 3 else ''}echo {step} >> tally.txt"
    return json.dumps({"thought": f"count {step}", "tool": "run_command", "args": {"command": command}})


def _config(data_dir: Path) -> dict[str, Any]:
    return {
        "device": {"id": DEVICE, "data_dir": str(data_dir)},
        "tools": {"load_entry_points": False},
        "memory": {"episodic": False},
        "safety": {"stuck_warnings": 100, "failing_repeats": 100},
        "agent": {"max_steps": 100, "max_tool_calls": 100},
        "hub": {"heartbeat_s": 0.5},
        "store": {"checkpoint_s": 3600},
    }


def _env() -> dict[str, str]:
    return {
        "EDGEHUB_EDGE__DEVICE__ID": DEVICE,
        "EDGEHUB_EDGE__TOOLS__LOAD_ENTRY_POINTS": "false",
        "EDGEHUB_EDGE__MEMORY__EPISODIC": "false",
    }


def _tally(data_dir: Path, agent: str = AGENT) -> list[str]:
    path = data_dir / "workspaces" / agent / "tally.txt"
    return path.read_text().split() if path.exists() else []


def _hub_agent(hub: Hub, agent: str) -> dict[str, Any] | None:
    done = hub.cli("agents", "get", agent)
    return json.loads(done.stdout) if done.returncode == 0 else None


def _hub_step(hub: Hub, agent: str) -> int:
    """The last step of ``agent`` the hub applied (-1: none)."""
    found = _hub_agent(hub, agent)
    return int(found.get("step", 0)) if found is not None else -1


def _hub_has(hub: Hub, agent: str, status: str) -> dict[str, Any] | None:
    found = _hub_agent(hub, agent)
    return found if found is not None and found.get("status") == status else None


def _twin(hub: Hub) -> dict[str, Any]:
    done = hub.cli("devices", "get", DEVICE, "--json")
    assert done.returncode == 0, done.stderr
    twin: dict[str, Any] = json.loads(done.stdout).get("twin", {})
    return twin


def _log(data_dir: Path) -> str:
    return (data_dir / "edge.log").read_text(errors="replace")[-3000:]


def _admin(hub: Hub) -> hub_pb2_grpc.HubServiceStub:
    """The admin's raw gRPC stub (on the operators' port)."""
    token = (hub.trust / "admin.token").read_text().strip()
    creds = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials((hub.trust / "ca.pem").read_bytes()),
        grpc.access_token_call_credentials(token),
    )
    return hub_pb2_grpc.HubServiceStub(grpc.secure_channel(hub.api, creds))


def _copy(data_dir: Path, to: Path) -> None:
    to.mkdir()
    for name in FILES:
        if (data_dir / name).exists():
            shutil.copy2(data_dir / name, to / name)


def _put_back(copy: Path, data_dir: Path) -> None:
    """The old copy of the database AND its watermark put back (the device restored from a backup)."""
    for name in (*FILES, "edge.db-shm"):
        (data_dir / name).unlink(missing_ok=True)
        if (copy / name).exists():
            shutil.copy2(copy / name, data_dir / name)


@pytest.fixture
def hub(tmp_path: Path) -> Any:
    hub = start_hub(tmp_path / "hub", "hub-recover")
    try:
        hub.wait_ready()
        yield hub
    finally:
        hub.stop()


def _killed_after_the_hub_saw_step_3(hub: Hub, data_dir: Path, old: Path) -> list[str]:
    """The agent killed after step 1 (tally 1, 2), that state copied aside with its watermark; then
    run again until the hub has applied its step 3 and killed (SIGKILL): the tally it left."""
    enrolled = hub.enroll(DEVICE, data_dir)
    assert enrolled.returncode == 0, enrolled.stderr
    store = SqliteStore.open(data_dir / "edge.db", device_id=DEVICE)
    store.create_agent(new_agent(AGENT, "Count in tally.txt."))
    store.close()
    edge = start_edge(_config(data_dir), SCRIPT, env={"EDGEHUB_FAILPOINTS": "after_checkpoint@1"})
    assert edge.wait(timeout=120) == -signal.SIGKILL, _log(data_dir)
    assert _tally(data_dir) == ["1", "2"]
    _copy(data_dir, old)

    edge = start_edge(_config(data_dir), SCRIPT)
    try:
        assert_eventually(lambda: _hub_step(hub, AGENT) >= 3, timeout=120, what=lambda: _log(data_dir))
    finally:
        edge.kill()
        edge.wait(timeout=30)
    time.sleep(2)  # a command the kill interrupted has ended by now
    tally = _tally(data_dir)
    assert tally[:4] == ["1", "2", "3", "4"], tally
    return tally


def _restricted(hub: Hub, data_dir: Path) -> dict[str, Any]:
    """The twin the hub holds once the daemon started restricted; the daemon keeps running."""
    edge = start_edge(_config(data_dir), SCRIPT)
    try:
        twin: dict[str, Any] = assert_eventually(
            lambda: (t := _twin(hub)).get("state") == "DEVICE_STATE_RESTRICTED" and t,
            timeout=60,
            what=lambda: _log(data_dir),
        )
        assert "rolled back" in twin["restricted"]
        assert edge.poll() is None, _log(data_dir)
        assert "RESTRICTED, holding agents" in _log(data_dir)
        shown = hub.cli("devices", "list", env=WIDE)
        assert "restricted" in shown.stdout, shown.stdout
    finally:
        stop_edges([edge])
    assert edge.returncode == 0, _log(data_dir)
    return twin


def _recover(data_dir: Path) -> str:
    recovered = edgehub("edge", "doctor", "--store", "--recover-from-hub", "--by", "tester",
                        data_dir=data_dir, env=_env())  # fmt: skip
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    assert "recovered from the hub by tester" in recovered.stdout
    assert "cannot be recovered: agent checkpoints newer" in recovered.stdout
    return recovered.stdout


def _resumes_without_repeating(hub: Hub, data_dir: Path, tally: list[str]) -> None:
    """After recovery: the stopped agent's end and a new agent's steps reach the hub (its sequence is
    past the hub's, so nothing is dropped as a resend), and no step of the old agent runs again."""
    store = SqliteStore.open(data_dir / "edge.db", device_id=DEVICE)
    try:
        assert store.rolled_back is None
        store.create_agent(new_agent("after-r", "Count in tally.txt."))
    finally:
        store.close()
    edge = start_edge(_config(data_dir), SCRIPT)
    try:
        stopped = assert_eventually(lambda: _hub_has(hub, AGENT, "AGENT_STATUS_STOPPED"), timeout=60,
                                    what=lambda: f"{_hub_agent(hub, AGENT)} {_log(data_dir)}")  # fmt: skip
        assert "recovered from the hub by tester" in stopped["detail"]
        assert_eventually(lambda: _hub_step(hub, "after-r") >= 3, timeout=60, what=lambda: _log(data_dir))
        assert _twin(hub).get("state") == "DEVICE_STATE_RUNNING"
    finally:
        stop_edges([edge])
    assert _tally(data_dir) == tally
    state = agent_state(data_dir, AGENT)
    assert state is not None
    assert state.status == S.AGENT_STATUS_STOPPED


def test_an_old_copy_put_back_with_its_watermark_is_caught_by_the_hub_and_recovered_from_it(
    hub: Hub, tmp_path: Path
) -> None:
    data_dir, old = tmp_path / "edge", tmp_path / "old"
    tally = _killed_after_the_hub_saw_step_3(hub, data_dir, old)
    _put_back(old, data_dir)
    # the device's own files agree with each other: only the hub knows better
    store = SqliteStore.open(data_dir / "edge.db", device_id=DEVICE)
    try:
        assert store.rolled_back is None
        assert store.load_agent(AGENT).step == 2
    finally:
        store.close()

    # restricted, not refused: it stays up, reports why, holds the agent and repeats nothing
    twin = _restricted(hub, data_dir)
    assert "its outbox ends at seq" in twin["restricted"]
    assert "the hub applied" in twin["restricted"]
    assert twin["agents_held"] == [AGENT]
    assert _tally(data_dir) == tally
    listed = edgehub("agent", "list", data_dir=data_dir, env={**_env(), **WIDE})
    assert "held: store rolled back" in listed.stdout, listed.stdout + listed.stderr
    assert "rolled back" in listed.stderr

    # the watermark now carries the hub's sequence: caught without the hub too, in one line, exit 2
    offline = {**_env(), "EDGEHUB_EDGE__HUB__NATS_URL": "nats://127.0.0.1:9"}
    run = edgehub("edge", "run", "--until-idle", data_dir=data_dir, env=offline)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "rolled back" in run.stderr
    assert "Traceback" not in run.stderr

    # what the hub holds of a device is that device's alone: an operator is not a device
    with pytest.raises(grpc.RpcError) as denied:
        _admin(hub).GetDeviceRecovery(hub_pb2.GetDeviceRecoveryRequest(), timeout=10)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "only a device" in denied.value.details()

    out = _recover(data_dir)
    assert f"lost: agent {AGENT}: this store resumes it at step 2" in out
    assert "step 2 action: run_command" in out
    assert "step 3 action: run_command" in out
    assert f"stopped (would repeat what the hub saw): {AGENT}" in out
    store = SqliteStore.open(data_dir / "edge.db", device_id=DEVICE)
    try:
        assert "step 3 action: run_command" in store.load_agent(AGENT).failure_reason
        ((lost,),) = store._rows("SELECT lost FROM rollbacks")
        assert json.loads(lost)[0].startswith(f"agent {AGENT}")
    finally:
        store.close()
    _resumes_without_repeating(hub, data_dir, tally)


@pytest.mark.parametrize("keep", [0.0, 0.5], ids=["wal-truncated-to-zero", "wal-truncated-to-half"])
def test_a_truncated_wal_on_an_enrolled_device_runs_restricted_then_recovers_from_the_hub(
    hub: Hub, tmp_path: Path, keep: float
) -> None:
    data_dir, old = tmp_path / "edge", tmp_path / "old"
    tally = _killed_after_the_hub_saw_step_3(hub, data_dir, old)
    wal = data_dir / "edge.db-wal"
    assert wal.stat().st_size > 0
    os.truncate(wal, int(wal.stat().st_size * keep))

    _restricted(hub, data_dir)
    assert _tally(data_dir) == tally
    out = _recover(data_dir)
    assert f"lost: agent {AGENT}" in out
    _resumes_without_repeating(hub, data_dir, tally)


async def test_a_daemon_without_a_hub_on_a_rolled_back_store_runs_restricted_until_stopped(
    tmp_path: Path,
) -> None:
    from edgehub.edge.app import EdgeDaemon
    from edgehub.edge.config import EdgeConfig
    from edgehub.llm.fake import FakeBrain

    config = _config(tmp_path)
    del config["hub"]
    store = SqliteStore.open(tmp_path / "edge.db", device_id=DEVICE)
    store.create_agent(new_agent(AGENT, "Count in tally.txt."))
    store.compare_hub(5)  # as if the hub had said so: the watermark remembers it
    store.close()

    async with EdgeDaemon(EdgeConfig.model_validate(config), brain=FakeBrain(brain)) as daemon:
        assert daemon.parts.restricted is not None
        twin = daemon.report()
        assert twin.state == twin_pb2.DEVICE_STATE_RESTRICTED
        assert "but the hub side acknowledged up to seq 5" in twin.restricted
        assert list(twin.agents_held) == [AGENT]
        running = asyncio.create_task(daemon.run())
        await asyncio.sleep(1.0)
        assert not running.done()  # it stays up (no crash), and runs nothing
        daemon.request_stop()
        await asyncio.wait_for(running, 10)
    assert _tally(tmp_path) == []
    assert agent_state(tmp_path, AGENT).status == S.AGENT_STATUS_PENDING
