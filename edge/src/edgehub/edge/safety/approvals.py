"""Needs-approval: the policy admission, pausing an agent, and an operator's decision.

Flow: the policy marks a call ``needs_approval`` -> the gateway refuses it with that error -> the loop
checkpoints the agent as AWAITING_APPROVAL together with an ``Approval`` holding the proposal (no
device time or model time is spent while it waits) -> an operator decides (``edgehub approvals
decide``; later relayed by the hub) -> ``decide`` records the decision and sets the agent RUNNING in
one transaction -> the scheduler resumes it, the step replays the stored proposal, and the policy
admission turns the decision into allow (recording who approved) or deny.
The policy in force at resume still wins: an approved call that policy now denies stays denied.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from edgehub.protocol.v1 import agent_pb2

from ..agent.tools.base import ToolContext, ToolSpec
from ..agent.tools.gateway import Decision
from ..errors import EdgeError
from ..jsontypes import JsonObject
from ..store.base import Approval, EdgeStore
from .policy import PolicyEngine

S = agent_pb2


class ApprovalLog(Protocol):
    def get_approval(self, key: str) -> Approval | None: ...


class PolicyAdmission:
    """Admission check backed by the policy engine and the operators' decisions."""

    def __init__(self, engine: PolicyEngine, approvals: ApprovalLog) -> None:
        self.engine = engine
        self.approvals = approvals

    async def admit(
        self, call: agent_pb2.ToolCall, spec: ToolSpec, args: JsonObject, ctx: ToolContext
    ) -> Decision:
        v = self.engine.decide(call.tool, args)
        if v.effect != "needs_approval":
            return Decision(v.effect, v.reason, v.rule, v.digest, network=v.network)
        a = self.approvals.get_approval(ctx.idempotency_key)
        if a is None or a.status == "pending" or (a.tool, a.args_json) != (call.tool, call.args_json):
            return Decision("needs_approval", v.reason, v.rule, v.digest)
        note = f" ({a.note})" if a.note else ""
        if a.status == "approved":
            return Decision(
                "allow", f"approved by {a.decided_by}{note}", v.rule, v.digest, approved_by=a.decided_by
            )
        return Decision("deny", f"denied by operator {a.decided_by}{note}", v.rule, v.digest)


class ApprovalError(EdgeError):
    """An approval that does not exist or was already decided."""


def decide(store: EdgeStore, key: str, *, approve: bool, by: str, note: str = "") -> Approval:
    """Record an operator's decision on a pending approval and let the agent resume."""
    pending = store.get_approval(key)
    if pending is None:
        raise ApprovalError(f"no approval {key!r}; see `edgehub approvals list`")
    if pending.status != "pending":
        raise ApprovalError(f"approval {key!r} was already {pending.status} by {pending.decided_by}")
    if not by.strip():
        raise ApprovalError("say who decides (--by NAME): decisions are audited")
    decided = dataclasses.replace(
        pending, status="approved" if approve else "denied", decided_by=by, note=note
    )
    state = store.load_agent(pending.agent_id)
    if state.status == S.AGENT_STATUS_AWAITING_APPROVAL:
        state.status = S.AGENT_STATUS_RUNNING
    state.updated_at.GetCurrentTime()
    event = S.StepEvent(
        schema_version=1,
        event_id=f"{state.agent_id}/{state.epoch}/{pending.step}/approval-decided",
        agent_id=state.agent_id,
        epoch=state.epoch,
        step=pending.step,
        kind=S.STEP_KIND_APPROVAL_DECIDED,
        status=state.status,
        detail=f"{decided.status} by {by}" + (f": {note}" if note else ""),
    )
    event.action.CopyFrom(S.ToolCall(tool=pending.tool, args_json=pending.args_json, idempotency_key=key))
    event.at.GetCurrentTime()
    store.decide_approval(decided, state, event)
    return decided
