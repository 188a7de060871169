"""The store checked against what the hub holds, and recovered from it, on the real SQLite store: the
hub's applied sequence catches a store whose watermark went back with it, and is remembered in the
watermark; recovery moves the outbox past it, stops the agents whose lost steps the hub saw (their
ends queued for the hub) and lets the others resume. The hub's answer is the protobuf message it sends.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgehub.edge.agent.loop import new_agent
from edgehub.edge.errors import StoreError
from edgehub.edge.recovery import next_steps, recover
from edgehub.edge.store import SqliteStore
from edgehub.protocol.v1 import agent_pb2, hub_pb2

S = agent_pb2
H = hub_pb2


def _open(folder: Path) -> SqliteStore:
    return SqliteStore.open(folder / "edge.db", device_id="dev-1")


def _step(store: SqliteStore, agent_id: str) -> int:
    state = store.load_agent(agent_id)
    step = state.step
    state.step, state.status = step + 1, S.AGENT_STATUS_RUNNING
    event = S.StepEvent(
        event_id=f"{agent_id}/0/{step}/action", agent_id=agent_id, step=step, kind=S.STEP_KIND_ACTION
    )
    return store.checkpoint(state, event, [S.Turn(step=step, role="action", text=f"a{step}", tokens=1)])


def _seen(
    agent_id: str, steps: range, status: S.AgentStatus.ValueType = S.AGENT_STATUS_RUNNING
) -> H.RecoveredAgent:
    """An agent as the hub answers for it: its record and the step events it received."""
    events = [
        S.StepEvent(
            agent_id=agent_id,
            step=step,
            kind=S.STEP_KIND_ACTION,
            action=S.ToolCall(tool="run_command", args_json=json.dumps({"command": f"echo {step}"})),
            observation=S.ToolResult(ok=True),
        )
        for step in steps
    ]
    record = H.AgentRecord(agent_id=agent_id, device_id="dev-1", status=status, step=steps[-1])
    return H.RecoveredAgent(record=record, events=events)


def _outbox_head(store: SqliteStore) -> int:
    return int(store._scalar("SELECT MAX(seq) FROM outbox"))


def test_an_outbox_below_what_the_hub_applied_is_a_rollback_the_watermark_then_remembers(
    tmp_path: Path,
) -> None:
    store = _open(tmp_path)
    store.create_agent(new_agent("a1", "goal"))
    for _ in range(3):
        _step(store, "a1")
    store.compare_hub(3)  # the hub applied what the store has: nothing lost
    assert store.rolled_back is None
    store.compare_hub(7)
    refused = store.rolled_back
    assert refused is not None
    assert "its outbox ends at seq 3, but the hub applied up to seq 7" in str(refused)
    assert "--recover-from-hub" in str(refused)
    with pytest.raises(type(refused)):
        _step(store, "a1")
    store.close()

    again = _open(tmp_path)  # without the hub: the watermark holds the hub's sequence now
    try:
        assert again.watermark.read() is not None
        assert again.rollback is not None
        assert again.rollback.acked_seq == 7
        assert again.held_agents() == ["a1"]
    finally:
        again.close()


def test_recovery_stops_the_agents_that_would_repeat_what_the_hub_saw_and_moves_the_outbox_past_it(
    tmp_path: Path,
) -> None:
    store = _open(tmp_path)
    for agent in ("lost-steps", "kept"):
        store.create_agent(new_agent(agent, "goal"))
        _step(store, agent)
        _step(store, agent)  # both at step 2 here, 4 outbox entries
    assert next_steps(store) == {"lost-steps": 2, "kept": 2}
    held = H.DeviceRecovery(
        device_id="dev-1",
        applied_seq=9,
        agents=[
            _seen("lost-steps", range(2, 5)),  # the hub saw steps 2-4 this store no longer has
            H.RecoveredAgent(record=H.AgentRecord(agent_id="kept", device_id="dev-1", step=1)),
            _seen("gone-active", range(0, 3)),
            _seen("gone-finished", range(0, 2), status=S.AGENT_STATUS_FINISHED),
        ],
    )
    done = recover(store, held, "tester")

    assert done.accepted.lost.hub_applied == 9
    assert set(done.stopped) == {"lost-steps", "gone-active"}
    assert [loss.agent_id for loss in done.losses] == ["lost-steps", "gone-active", "gone-finished"]
    assert done.losses[0].steps[0] == 'step 2 action: run_command {"command": "echo 2"} -> ok'
    assert any("gone-active" in line for line in done.unrecoverable)
    assert store.rolled_back is None
    stopped = store.load_agent("lost-steps")
    assert stopped.status == S.AGENT_STATUS_STOPPED
    assert stopped.step == 5
    assert "step 4 action: run_command" in stopped.failure_reason
    assert store.load_agent("kept").status == S.AGENT_STATUS_RUNNING  # resumes: the hub saw nothing more
    assert store.load_agent("gone-active").status == S.AGENT_STATUS_STOPPED
    assert not store.has_agent("gone-finished")  # ended on the hub: nothing here would resume it

    # the two ends go to the hub after its applied sequence (the placeholder at 9 is never sent)
    pending = store.outbox_pending()
    assert [e.seq for e in pending] == [10, 11]
    assert {e.event.agent_id for e in pending} == {"lost-steps", "gone-active"}
    assert all(e.event.step.kind == S.STEP_KIND_END for e in pending)
    assert _outbox_head(store) == 11
    ((lost,),) = store._rows("SELECT lost FROM rollbacks")
    assert len(json.loads(lost)) == 3
    mark = store.watermark.read()
    assert mark is not None
    assert mark.generation == store.generation
    store.close()


def test_an_agent_the_hub_saw_finish_takes_that_end_and_sends_nothing(tmp_path: Path) -> None:
    store = _open(tmp_path)
    store.create_agent(new_agent("a1", "goal"))
    _step(store, "a1")
    held = H.DeviceRecovery(applied_seq=5, agents=[_seen("a1", range(1, 4), S.AGENT_STATUS_FINISHED)])
    done = recover(store, held, "tester")
    assert done.stopped == ("a1",)
    assert store.load_agent("a1").status == S.AGENT_STATUS_FINISHED
    assert store.outbox_pending() == []
    store.close()


def test_recovering_a_store_that_lost_nothing_is_one_clear_error(tmp_path: Path) -> None:
    store = _open(tmp_path)
    store.create_agent(new_agent("a1", "goal"))
    _step(store, "a1")
    with pytest.raises(StoreError, match="lost nothing the watermark or the hub knows of"):
        recover(store, H.DeviceRecovery(applied_seq=1), "tester")
    assert store.load_agent("a1").status == S.AGENT_STATUS_RUNNING
    store.close()
