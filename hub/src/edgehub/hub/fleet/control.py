"""Commands to devices in an operator's name (``edgehub.sync.commands``): start, stop and approvals
for agents, drain for devices. An agent's command goes to its owner with the epoch the registry
knows, so a device holding a stale copy of it refuses it. A started agent is registered to its device
(``AgentRegistry.reserve``) before the command is sent: an id another device owns is refused. An
approval decision is signed with the hub's key (``edgehub.sync.decisions``), naming the operator the
API authenticated as the approver: devices apply no other."""

from __future__ import annotations

import time
import uuid

from nats.js import JetStreamContext

from edgehub.protocol.errors import ErrorCode
from edgehub.protocol.ids import check_id
from edgehub.protocol.v1 import commands_pb2, hub_pb2
from edgehub.sync.commands import new_command, send_command
from edgehub.sync.decisions import SigningKey
from edgehub.sync.streams import MAX_EVENT_BYTES

from ..errors import Refused
from .agents import AgentRegistry, in_hub_namespace

H = hub_pb2


def _invalid(message: str) -> Refused:
    return Refused(ErrorCode.INVALID_ARGUMENT, message)


class Commands:
    """The operator's commands to devices (see the module docstring)."""

    def __init__(
        self, js: JetStreamContext, agents: AgentRegistry, signer: SigningKey, decision_ttl_s: float
    ) -> None:
        self.js = js
        self.agents = agents
        self.signer = signer
        self.decision_ttl_s = decision_ttl_s

    async def send(self, cmd: commands_pb2.Command) -> H.CommandAccepted:
        if cmd.ByteSize() > MAX_EVENT_BYTES:  # the edge would dead-letter it unread
            raise _invalid(f"the command is {cmd.ByteSize()} bytes, at most {MAX_EVENT_BYTES} allowed")
        try:
            await send_command(self.js, cmd)
        except Exception as exc:  # NATS unreachable, the stream missing: the operator may retry
            raise Refused(ErrorCode.UNAVAILABLE, f"could not queue the command: {exc}") from None
        return H.CommandAccepted(command_id=cmd.command_id, device_id=cmd.device_id)

    async def drain(self, req: H.DrainDeviceRequest, by: str) -> H.CommandAccepted:
        if not req.device_id:
            raise _invalid("device_id is required")
        cmd = new_command(req.device_id, by)
        cmd.drain.reason = req.reason or "drained through the hub API"
        cmd.drain.resume = req.resume
        return await self.send(cmd)

    async def start_agent(self, req: H.StartAgentRequest, by: str) -> H.StartAgentResponse:
        if not req.device_id or not req.goal.strip():
            raise _invalid("device_id and goal are required")
        if in_hub_namespace(req.agent_id):
            raise _invalid("agent ids g-<12 hex digits>-... are the planner's; choose another")
        cmd = new_command(req.device_id, by)
        cmd.start_agent.agent_id = req.agent_id or f"agent-{uuid.uuid4().hex[:12]}"
        cmd.start_agent.goal = req.goal
        cmd.start_agent.budget.CopyFrom(req.budget)
        # registered to the device before it hears of it: no other device can claim it meanwhile
        await self.agents.reserve(cmd.start_agent.agent_id, req.device_id)
        await self.send(cmd)
        return H.StartAgentResponse(agent_id=cmd.start_agent.agent_id, command_id=cmd.command_id)

    async def stop_agent(self, req: H.StopAgentRequest, by: str) -> H.CommandAccepted:
        cmd = await self._to_owner(req.agent_id, req.device_id, by)
        cmd.stop_agent.agent_id = req.agent_id
        cmd.stop_agent.reason = req.reason or "stopped through the hub API"
        return await self.send(cmd)

    async def decide(self, req: H.DecideApprovalRequest, by: str) -> H.CommandAccepted:
        """Relay a decision, signed, in the name of ``by`` (the authenticated caller)."""
        agent_id, _, step = req.key.rpartition("/")
        if not step.isdecimal() or len(step) > 10:
            raise _invalid("key (AGENT/STEP) is required")
        if req.by:  # deprecated
            raise _invalid(
                "by: no longer accepted; the decision is your token's (say on whose behalf in note)"
            )
        cmd = await self._to_owner(check_id(agent_id, "key"), req.device_id, by)
        now = time.time()
        decision = commands_pb2.ApprovalDecision(
            decision_id=cmd.command_id, device_id=cmd.device_id, key=req.key, approve=req.approve,
            approver=by, note=req.note, issued_at=now, expires_at=now + self.decision_ttl_s,
            epoch=cmd.epoch,
        )  # fmt: skip
        cmd.decide_approval.CopyFrom(self.signer.sign(decision))
        d = cmd.decide_approval  # what a daemon of the release before applies, unsigned
        d.approve, d.by, d.note = req.approve, by, req.note
        return await self.send(cmd)

    async def _to_owner(self, agent_id: str, device_id: str, by: str) -> commands_pb2.Command:
        """A command for an agent: to the caller's device, else the agent's owner, with the agent's
        epoch as the hub knows it (0 when unknown or sent elsewhere: the device does not check it)."""
        record = await self.agents.get(agent_id) if agent_id else None
        if record is None and not device_id:
            await self.agents.require(agent_id)  # raises: INVALID_ARGUMENT or NOT_FOUND
        cmd = new_command(device_id or (record.device_id if record else ""), by)
        if record is not None and device_id in ("", record.device_id):
            cmd.epoch = record.epoch
        return cmd
