"""kill -9 of the daemon at each phase of a step, then a restart: no step lost, none repeated."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from edgehub.edge.store.sqlite import SqliteStore
from edgehub.protocol.v1 import agent_pb2
from tests.harness.cli import edgehub

S = agent_pb2
GOAL = "Save the word green to leaf.txt, then read leaf.txt back and finish with what it says."
TALLY_GOAL = "Run the command echo green >> tally.txt, then finish with done."

pytestmark = pytest.mark.model


def _submit_and_crash(data_dir: Path, goal: str, failpoint: str, tools: str | None = None) -> None:
    env = {"EDGEHUB_FAILPOINTS": failpoint}
    if tools:
        env["EDGEHUB_EDGE__TOOLS__ENABLED"] = tools
    crashed = edgehub("agent", "run", "--goal", goal, "--json", data_dir=data_dir, env=env)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]


def _resume(data_dir: Path, tools: str | None = None) -> None:
    env = {"EDGEHUB_EDGE__TOOLS__ENABLED": tools} if tools else {}
    resumed = edgehub("edge", "run", "--until-idle", data_dir=data_dir, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]


def _only_agent(data_dir: Path) -> tuple[agent_pb2.AgentState, list[agent_pb2.StepEvent]]:
    store = SqliteStore.open(data_dir / "edge.db", device_id="local")
    try:
        (state,) = store.list_agents()
        return state, store.mind_log(state.agent_id)
    finally:
        store.close()


def _assert_gap_free(log: list[agent_pb2.StepEvent]) -> None:
    steps = [e.step for e in log if e.kind == S.STEP_KIND_ACTION]
    assert steps == list(range(len(steps))), f"steps lost or repeated: {steps}"
    ids = [e.event_id for e in log]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("point", ["after_intent", "after_tool", "after_checkpoint"])
def test_killed_daemon_resumes_from_its_last_checkpoint(tmp_path: Path, point: str) -> None:
    _submit_and_crash(tmp_path, GOAL, f"{point}@1")
    state, log = _only_agent(tmp_path)
    expected_before = 2 if point == "after_checkpoint" else 1
    assert state.status == S.AGENT_STATUS_RUNNING
    assert state.step == expected_before

    _resume(tmp_path)
    state, log = _only_agent(tmp_path)
    assert state.status == S.AGENT_STATUS_FINISHED, state.failure_reason
    _assert_gap_free(log)
    assert "green" in state.answer


def test_interrupted_command_is_not_run_again_after_a_crash(tmp_path: Path) -> None:
    tools = '["run_command", "finish"]'
    _submit_and_crash(tmp_path, TALLY_GOAL, "after_tool@0", tools)
    state, _ = _only_agent(tmp_path)
    workspace = tmp_path / "workspaces" / state.agent_id
    ran_before_crash = (workspace / "tally.txt").read_text().count("green")
    assert ran_before_crash == 1

    _resume(tmp_path, tools)
    state, log = _only_agent(tmp_path)
    _assert_gap_free(log)
    first = log[0]
    assert first.action.tool == "run_command"
    assert (first.observation.ok, first.observation.error) == (False, "interrupted")
    ran = [  # later run_command steps that ran: the stuck monitor refuses a repeat of one that already ran
        json.loads(e.action.args_json)["command"]
        for e in log[1:]
        if e.action.tool == "run_command" and e.observation.error not in ("repeated", "withheld")
    ]
    # the interrupted call was not repeated; any later run_command that ran is a new step the model chose
    assert (workspace / "tally.txt").read_text().count("green") == 1 + sum("tally" in c for c in ran)
