"""What the hub holds of one device, for that device to detect and recover from a store that went back
in time (``GetDeviceRecovery``): the last outbox sequence the hub applied from it (``edgehub-applied``,
written by ``edgehub.sync.applier``), the agents the registry says it owns, and the step events the
hub received of each after the step the device still has (read back from the events stream, as
``TraceAgent`` does). Read-only; the device is the one the API authenticated."""

from __future__ import annotations

from nats.js import JetStreamContext

from edgehub.protocol.v1 import agent_pb2, hub_pb2
from edgehub.sync.records import RecordStore, TextCodec
from edgehub.sync.streams import APPLIED

from .agents import AgentRegistry
from .traces import MAX_PAGE, Traces

MAX_EVENTS = 200
"""Step events returned per agent at most (``max_events``' default and cap)."""
MAX_TEXT = 500
"""Characters kept of a returned event's arguments and detail: the answer says what each step did,
not everything it saw (200 events of many agents must fit one message)."""


def slim(event: agent_pb2.StepEvent) -> agent_pb2.StepEvent:
    """``event`` without what recovery does not need (thought, plan, the observation's output), and its
    arguments and detail cut to ``MAX_TEXT`` characters."""
    out = agent_pb2.StepEvent()
    out.CopyFrom(event)
    out.thought = out.rationale = out.observation.output = ""
    del out.plan[:]
    out.action.args_json = out.action.args_json[:MAX_TEXT]
    out.detail = out.detail[:MAX_TEXT]
    return out


class DeviceRecoveryView:
    """``GetDeviceRecovery``'s answer, built from the hub's buckets and events stream."""

    def __init__(self, js: JetStreamContext, agents: AgentRegistry, traces: Traces) -> None:
        self.applied = RecordStore(js, APPLIED.name, TextCodec())
        self.agents = agents
        self.traces = traces

    async def applied_seq(self, device_id: str) -> int:
        """The last outbox sequence the hub applied from ``device_id`` (0: none yet)."""
        found = await self.applied.get(device_id)
        return 0 if found is None else int(found.value or "0")

    async def of(self, device_id: str, request: hub_pb2.GetDeviceRecoveryRequest) -> hub_pb2.DeviceRecovery:
        """What the hub holds of ``device_id`` (the authenticated caller, never a request field)."""
        limit = min(request.max_events or MAX_EVENTS, MAX_EVENTS)
        out = hub_pb2.DeviceRecovery(device_id=device_id, applied_seq=await self.applied_seq(device_id))
        if request.applied_only:
            return out
        for record in await self.agents.all():  # the whole registry: recovery is rare, and per-device
            if record.device_id != device_id:  # indexes would be one more thing to keep in step
                continue
            agent = out.agents.add(record=record)
            first = request.next_steps.get(record.agent_id, 0)
            agent.truncated = await self._events_from(agent, first, limit)
        return out

    async def _events_from(self, agent: hub_pb2.RecoveredAgent, first: int, limit: int) -> bool:
        """Fill ``agent.events`` with its step events from step ``first`` on (at most ``limit``); whether
        there were more."""
        token = ""
        while True:
            page = await self.traces.page(agent.record.agent_id, MAX_PAGE, token)
            for event in page.events:
                if event.step < first:
                    continue
                if len(agent.events) >= limit:
                    return True
                agent.events.append(slim(event))
            if not (token := page.next_page_token):
                return False
