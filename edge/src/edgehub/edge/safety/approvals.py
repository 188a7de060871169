"""Needs-approval: the policy admission, pausing an agent, and an operator's decision.

Flow: the policy marks a call ``needs_approval`` -> the gateway refuses it with that error -> the loop
checkpoints the agent as AWAITING_APPROVAL together with an ``Approval`` holding the proposal (no
device time or model time is spent while it waits) -> an operator decides -> ``decide`` records the
decision and sets the agent RUNNING in one transaction -> the scheduler resumes it, the step replays
the stored proposal, and the policy admission turns the decision into allow (recording who approved)
or deny. The policy in force at resume still wins: an approved call that policy now denies stays denied.

Who decided is never a name someone typed (issue 17). A decision comes either from the hub, signed with
its key and naming the API token it authenticated (``uplink/commands.py`` verifies it:
``Approver.hub``), or from someone on the device running ``edgehub approvals decide``, recorded as
``local:<OS user>`` and allowed only where ``[safety] local_approvals`` allows it (by default only on a
device not enrolled with a hub: ``local_approvals_allowed``). The admission honours a local decision
only while local decisions are allowed, so a CLI run with another config cannot approve for the daemon.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
from dataclasses import dataclass
from typing import Literal, Protocol

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


LocalApprovals = Literal["unenrolled", "on", "off"]


def local_approvals_allowed(mode: LocalApprovals, enrolled: bool) -> bool:
    """Whether a decision made on the device counts: ``on``, or ``unenrolled`` (the default) on a device
    not enrolled with a hub (whose hub could decide instead)."""
    return mode == "on" or (mode == "unenrolled" and not enrolled)


@dataclass(frozen=True, slots=True)
class Approver:
    """Who decides an approval, as verified on this device."""

    name: str
    """``operator:NAME`` (the API token the hub authenticated) or ``local:USER``."""
    via: str
    """``hub`` or ``local``."""
    decision_id: str = ""
    """The hub's signed decision (applied once)."""

    @classmethod
    def local(cls) -> Approver:
        """The OS user running this process (the kernel's word for it, not one typed)."""
        try:
            user = pwd.getpwuid(os.getuid()).pw_name
        except KeyError:  # a uid without a passwd entry (a container)
            user = f"uid-{os.getuid()}"
        return cls(f"local:{user}", "local")


class PolicyAdmission:
    """Admission check backed by the policy engine and the operators' decisions; a decision made on the
    device counts only when ``local_ok`` (``local_approvals_allowed``)."""

    def __init__(self, engine: PolicyEngine, approvals: ApprovalLog, *, local_ok: bool = True) -> None:
        self.engine = engine
        self.approvals = approvals
        self.local_ok = local_ok

    async def admit(
        self, call: agent_pb2.ToolCall, spec: ToolSpec, args: JsonObject, ctx: ToolContext
    ) -> Decision:
        v = self.engine.decide(call.tool, args)
        ver = v.version
        if v.effect != "needs_approval":
            return Decision(v.effect, v.reason, v.rule, v.digest, network=v.network, policy_version=ver)
        a = self.approvals.get_approval(ctx.idempotency_key)
        if a is None or a.status == "pending" or (a.tool, a.args_json) != (call.tool, call.args_json):
            return Decision("needs_approval", v.reason, v.rule, v.digest, policy_version=ver)
        if a.decided_via == "local" and not self.local_ok:
            why = f"{v.reason}; decided on the device by {a.decided_by}, but local decisions are off"
            return Decision("needs_approval", why, v.rule, v.digest, policy_version=ver)
        note = f" ({a.note})" if a.note else ""
        if a.status == "approved":
            why = f"approved by {a.decided_by}{note}"
            return Decision("allow", why, v.rule, v.digest, approved_by=a.decided_by, policy_version=ver)
        return Decision("deny", f"denied by {a.decided_by}{note}", v.rule, v.digest, policy_version=ver)


_HOW = {"hub": "signed by the hub", "local": "on the device"}


class ApprovalError(EdgeError):
    """An approval that does not exist or was already decided."""


def decide(store: EdgeStore, key: str, *, approve: bool, approver: Approver, note: str = "") -> Approval:
    """Record a decision on a pending approval, under its verified ``approver``, and let the agent
    resume (``ApprovalError``: there is none, or it was decided)."""
    pending = store.get_approval(key)
    if pending is None:
        raise ApprovalError(f"no approval {key!r}; see `edgehub approvals list`")
    if pending.status != "pending":
        raise ApprovalError(f"approval {key!r} was already {pending.status} by {pending.decided_by}")
    by = approver.name
    decided = dataclasses.replace(
        pending,
        status="approved" if approve else "denied",
        decided_by=by,
        note=note,
        decided_via=approver.via,
        decision_id=approver.decision_id,
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
        detail=f"{decided.status} by {by} ({_HOW.get(approver.via, approver.via)})"
        + (f": {note}" if note else ""),
    )
    event.action.CopyFrom(S.ToolCall(tool=pending.tool, args_json=pending.args_json, idempotency_key=key))
    event.at.GetCurrentTime()
    store.decide_approval(decided, state, event)
    return decided
