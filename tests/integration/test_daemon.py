"""The edge daemon as a process: goals submitted by the CLI, SIGTERM drains, restart resumes."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from edgehub.edge.agent.loop import new_agent
from edgehub.edge.store.sqlite import SqliteStore
from edgehub.protocol.v1 import agent_pb2
from tests.harness.cli import edgehub, start_daemon
from tests.harness.wait import assert_eventually

S = agent_pb2
GOAL = "Save the word green to leaf.txt, then read leaf.txt back and finish with what it says."

pytestmark = pytest.mark.model


def test_cli_runs_a_goal_through_the_running_daemon_and_traces_it(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path)
    try:
        done = edgehub("agent", "run", "--goal", GOAL, "--json", data_dir=tmp_path)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        lines = [json.loads(line) for line in done.stdout.splitlines()]
        agent = lines[-1]["agent"]
        assert agent["status"] == "AGENT_STATUS_FINISHED"
        steps = [line["event"].get("step", 0) for line in lines if "event" in line]
        assert steps == list(range(len(steps)))
        assert len(steps) >= 3
        trace = edgehub("agent", "trace", agent["agent_id"], data_dir=tmp_path)
        assert trace.returncode == 0
        assert "write_file" in trace.stdout
        assert "finished" in trace.stdout
        listed = edgehub("agent", "list", data_dir=tmp_path)
        assert agent["agent_id"] in listed.stdout
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0


def _store(data_dir: Path) -> SqliteStore:
    return SqliteStore.open(data_dir / "edge.db", device_id="local")


def test_sigterm_lets_the_running_step_checkpoint_and_a_restart_resumes(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path)
    store = _store(tmp_path)
    try:
        store.create_agent(new_agent("a1", GOAL))
        assert_eventually(lambda: store.mind_log("a1"), what="the first step")
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0, daemon.communicate()[0][-2000:]
        state = store.load_agent("a1")
        log = store.mind_log("a1")
        # drained mid-goal (a step takes seconds on the model): the step in flight was committed, and the
        # state matches the mind-log exactly
        assert state.status == S.AGENT_STATUS_RUNNING
        assert state.step == len(log) >= 1
        assert [e.step for e in log] == list(range(len(log)))
        resumed = edgehub("edge", "run", "--until-idle", data_dir=tmp_path)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        state = store.load_agent("a1")
        steps = [e.step for e in store.mind_log("a1") if e.kind == S.STEP_KIND_ACTION]
        assert state.status == S.AGENT_STATUS_FINISHED
        assert steps == list(range(len(steps)))
    finally:
        store.close()
        if daemon.poll() is None:
            daemon.kill()
