"""What the hub returns of each step a device lost (``GetDeviceRecovery``): what the step did, not
everything it saw, so many agents' events fit one message."""

from __future__ import annotations

from edgehub.hub.fleet.recovery import MAX_TEXT, slim
from edgehub.protocol.v1 import agent_pb2

S = agent_pb2


def test_a_returned_step_keeps_what_it_did_and_drops_what_it_saw() -> None:
    event = S.StepEvent(
        agent_id="a1",
        step=3,
        kind=S.STEP_KIND_ACTION,
        thought="t" * 5000,
        plan=["one", "two"],
        action=S.ToolCall(tool="write_file", args_json="x" * 50_000, idempotency_key="a1/3"),
        observation=S.ToolResult(ok=True, output="o" * 16_000, idempotency_key="a1/3"),
        detail="d" * 2000,
    )
    out = slim(event)
    assert (out.agent_id, out.step, out.kind, out.action.tool) == ("a1", 3, S.STEP_KIND_ACTION, "write_file")
    assert out.observation.ok
    assert out.observation.idempotency_key == "a1/3"
    assert out.thought == ""
    assert out.observation.output == ""
    assert list(out.plan) == []
    assert len(out.action.args_json) == MAX_TEXT
    assert len(out.detail) == MAX_TEXT
    assert event.observation.output == "o" * 16_000  # the stored event is not changed
    assert out.ByteSize() < 2 * MAX_TEXT + 200
