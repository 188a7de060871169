"""What the fuzz targets (``tests/fuzz``) found, each as its minimal input, through the same harness
and properties the fuzzer checks (the hub's apply path over the in-memory JetStream)."""

from __future__ import annotations

import pytest

from edgehub.protocol import subjects
from edgehub.protocol.v1 import agent_pb2, commands_pb2, events_pb2, task_pb2
from edgehub.sync import MessageRejected, decode
from edgehub.sync.commands import decode_command
from edgehub.sync.fake import FakeMsg
from tests.fuzz.targets import events

S = agent_pb2


@pytest.fixture(scope="module", autouse=True)
def world() -> None:
    if events.WORLD.start is None:
        events.LOOP.run_until_complete(events.WORLD.build())


def envelope(device: str, agent: str) -> events_pb2.EdgeEvent:
    return events_pb2.EdgeEvent(
        schema_version=1, event_id=f"{agent}/1", device_id=device, seq=1, agent_id=agent
    )


def msg(event: events_pb2.EdgeEvent) -> FakeMsg:
    return FakeMsg(subjects.events(event.device_id, event.agent_id), event.SerializeToString())


def test_a_result_naming_another_devices_task_agent_is_refused_and_the_task_is_untouched() -> None:
    """Found by the events target: a device's result for its own agent, naming another device's task
    agent and task inside, failed (or finished, with its answer) that device's task."""
    forged = envelope("dev-new", "dev-x")
    forged.task_result.CopyFrom(
        task_pb2.TaskResult(
            task_id=f"{events.GOAL_ID}/a", agent_id=events.WORLD.task_agent, status=S.AGENT_STATUS_FAILED
        )
    )
    with pytest.raises(MessageRejected, match="task_result names agent"):
        decode(msg(forged))  # type: ignore[arg-type]
    events.LOOP.run_until_complete(events.run([msg(forged)]))  # the fuzzer's properties hold


def test_a_step_whose_time_is_out_of_range_is_refused_whole() -> None:
    """Found by the events target: the agent registry applied the step, then the goal intake, reading
    its time, raised and dead-lettered the event as refused: half applied."""
    step = envelope("dev-a", events.WORLD.task_agent)
    step.step.CopyFrom(S.StepEvent(agent_id=step.agent_id, step=1, status=S.AGENT_STATUS_RUNNING))
    step.step.at.nanos = -1675879396
    with pytest.raises(MessageRejected, match="at: not a time"):
        decode(msg(step))  # type: ignore[arg-type]
    events.LOOP.run_until_complete(events.run([msg(step)]))


def test_a_command_whose_time_is_out_of_range_is_rejected_by_the_edge() -> None:
    cmd = commands_pb2.Command(schema_version=1, command_id="cmd-1", device_id="dev-1")
    cmd.drain.reason = "maintenance"
    cmd.issued_at.seconds = 2**62
    with pytest.raises(MessageRejected, match="issued_at: not a time"):
        decode_command(FakeMsg(subjects.commands("dev-1"), cmd.SerializeToString()), "dev-1")  # type: ignore[arg-type]
