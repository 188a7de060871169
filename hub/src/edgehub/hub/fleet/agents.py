"""The fleet registry's agent records (``hub_pb2.AgentRecord``), kept in JetStream KV
(``edgehub-agents``, key: the agent) so any hub process can read and update them.

Each applied event updates its agent's record: owner device, epoch, status, step, and the device
sequence of the event that wrote it. Events of one device arrive in order, so a record only moves
forward; replaying an event is harmless (the record is rewritten with the same content). A migration
moves a record to another device with a newer epoch (``transfer``); ``fence`` tells, from the record,
whether an event's device owned the agent at the event's epoch.

Who may write for an agent id is decided before any device does (issue 17: a device must not claim
another's agent). The hub registers every agent it starts to its device before the command leaves
(``reserve``: ``StartAgent``, the planner's task agents; a migration moves an existing record), so
their ids are owned before a device learns them. The planner's ids (``{goal}-{task}-{attempt}``,
predictable to a device running a sibling task) are the hub's namespace (``HUB_AGENT_IDS``): no
device event registers one; only the hub's reservation does. An agent a device starts on its own
(``edgehub agent run``, a random id) is registered by its first event under the device's
authenticated subject, unless the id is already another device's or in the hub's namespace; an
event for another device's agent is refused (dead-lettered by the router).
"""

from __future__ import annotations

import asyncio
import re
import time

from nats.js import JetStreamContext

from edgehub.protocol.errors import ErrorCode
from edgehub.protocol.v1 import agent_pb2, events_pb2, hub_pb2
from edgehub.sync.records import JsonObject, ProtoCodec, RecordStore, Stored, json_legacy
from edgehub.sync.streams import AGENTS

from ..errors import Refused

S = agent_pb2
AgentRecord = hub_pb2.AgentRecord
Refusal = tuple[events_pb2.EdgeEvent, str]
"""An event ``fence`` refused, and why."""
RECORD_VERSION = 1
APPLY_ATTEMPTS = 8
"""Compare-and-set rounds of one agent's write in a batch (a migration or another hub writing it)."""
HUB_AGENT_IDS = re.compile(r"^g-[0-9a-f]{12}-")
"""The hub's namespace of agent ids: the planner's task agents, ``{goal id}-{task}-{attempt}`` with
goal ids ``g-`` and 12 hex digits (``goals.record.new_record``). Registered only by ``reserve``."""


def in_hub_namespace(agent_id: str) -> bool:
    """Only the hub registers this id (a planner's task agent), never a device's first event."""
    return HUB_AGENT_IDS.match(agent_id) is not None


def _from_json(raw: JsonObject) -> hub_pb2.AgentRecord:
    """An agent record as the release before stored it: JSON, the status by its short name
    (``running``), the migration history as ``epochs`` of objects, the migration as ``migration``."""
    return AgentRecord(
        agent_id=str(raw["agent_id"]),
        device_id=str(raw["device_id"]),
        epoch=int(raw.get("epoch", 0)),
        status=S.AgentStatus.Value(f"AGENT_STATUS_{str(raw.get('status', 'unspecified')).upper()}"),
        step=int(raw.get("step", 0)),
        last_event=str(raw.get("last_event", "")),
        detail=str(raw.get("detail", "")),
        updated_at=float(raw.get("updated_at", 0)),
        device_seq=int(raw.get("device_seq", 0)),
        epochs=[
            hub_pb2.AgentEpoch(epoch=int(e["epoch"]), device=str(e["device"]), from_step=int(e["from_step"]))
            for e in raw.get("epochs") or ()
        ],
        migration_id=str(raw.get("migration", "")),
        schema_version=RECORD_VERSION,
    )


CODEC = ProtoCodec(AgentRecord, RECORD_VERSION, legacy=json_legacy(_from_json))


def status_name(status: int) -> str:
    """``AGENT_STATUS_RUNNING`` -> ``running`` (what operators read and type)."""
    return S.AgentStatus.Name(status).removeprefix("AGENT_STATUS_").lower()  # type: ignore[arg-type]


def fence(record: hub_pb2.AgentRecord | None, event: events_pb2.EdgeEvent) -> str:
    """Why ``event`` may not be applied to the agent ``record`` describes ('' when it may).

    Without a migration history the owner is the device of the record. With one (``epochs``: the
    epoch, its device and the step it started at, oldest first), an event is accepted only from the
    device that owned its epoch and for that epoch's steps: the source's late events from before the
    hand-over are history; anything a stale copy did after it is refused."""
    if record is None:
        if in_hub_namespace(event.agent_id):
            return f"agent {event.agent_id} is the hub's to assign and is not registered to {event.device_id}"
        return ""
    history = record.epochs
    if not history:
        if event.device_id != record.device_id:
            return (
                f"agent {event.agent_id} belongs to device {record.device_id} (epoch {record.epoch}), "
                f"not {event.device_id}"
            )
        return ""
    for i, entry in enumerate(history):
        if entry.epoch != event.epoch:
            continue
        if entry.device != event.device_id:
            return (
                f"agent {event.agent_id} epoch {event.epoch} belongs to device {entry.device}, "
                f"not {event.device_id}"
            )
        step = event.step.step if event.WhichOneof("body") == "step" else entry.from_step
        end = history[i + 1].from_step if i + 1 < len(history) else None
        if step < entry.from_step or (end is not None and step >= end):
            return (
                f"stale epoch: agent {event.agent_id} step {step} at epoch {event.epoch} from "
                f"{event.device_id}, but epoch {history[-1].epoch} owns it from step {history[-1].from_step}"
            )
        return ""
    return f"unknown epoch {event.epoch} for agent {event.agent_id} (known: {[e.epoch for e in history]})"


def stranger(record: hub_pb2.AgentRecord | None, event: events_pb2.EdgeEvent) -> str:
    """Why ``event``'s device never owned the agent ('' when it owned it at some epoch): the check for
    events that carry no epoch of their own (episodes), where ``fence`` would judge them by epoch 0."""
    if record is None:
        return fence(None, event)
    if event.device_id in {record.device_id, *(e.device for e in record.epochs)}:
        return ""
    return f"agent {event.agent_id} belongs to device {record.device_id}, not {event.device_id}"


def written_by(event: events_pb2.EdgeEvent) -> hub_pb2.AgentRecord:
    """The record a step event writes (before the migration history is carried over)."""
    step = event.step
    record = AgentRecord(
        agent_id=event.agent_id,
        device_id=event.device_id,
        epoch=event.epoch,
        status=step.status,
        step=step.step,
        last_event=step.event_id,
        device_seq=event.seq,
        updated_at=time.time(),
    )
    if step.kind == S.STEP_KIND_END or step.status in (S.AGENT_STATUS_FINISHED, S.AGENT_STATUS_FAILED):
        record.detail = step.detail[:500]
    return record


def _applied(
    record: hub_pb2.AgentRecord | None, events: list[events_pb2.EdgeEvent]
) -> tuple[hub_pb2.AgentRecord | None, list[Refusal]]:
    """What one agent's events (in sequence order) make of its record: the new record (None: it does
    not move) and the events the fence refused."""
    refused, latest = [], None
    for event in events:
        reason = fence(record, event)
        if reason:
            refused.append((event, reason))
        elif record is None or event.epoch >= record.epoch:
            latest = event  # an older epoch's late event is history: it moves no record
    if latest is None:
        return None, refused
    new = written_by(latest)
    if record is not None:  # kept across the owner's writes: who owned it when, and what moved it
        new.epochs.extend(record.epochs)
        new.migration_id = record.migration_id
    return new, refused


class AgentRegistry:
    """The agent records (see the module docstring)."""

    def __init__(self, js: JetStreamContext) -> None:
        self.store = RecordStore(js, AGENTS.name, CODEC)

    async def get(self, agent_id: str) -> hub_pb2.AgentRecord | None:
        found = await self.store.get(agent_id)
        return None if found is None else found.value

    async def require(self, agent_id: str) -> hub_pb2.AgentRecord:
        """The agent's record; INVALID_ARGUMENT without an id, NOT_FOUND when it never reported."""
        if not agent_id:
            raise Refused(ErrorCode.INVALID_ARGUMENT, "agent_id is required")
        record = await self.get(agent_id)
        if record is None:
            raise Refused(ErrorCode.NOT_FOUND, f"no agent {agent_id!r} has reported to the hub")
        return record

    async def reserve(self, agent_id: str, device_id: str) -> None:
        """Register ``agent_id`` to ``device_id`` before the device is told to start it, so only that
        device's events are ever applied to it (done again for the same device: nothing changes).
        FAILED_PRECONDITION when another device owns it."""

        def change(found: Stored[hub_pb2.AgentRecord] | None) -> hub_pb2.AgentRecord | None:
            if found is not None:
                if found.value.device_id != device_id:
                    owner = found.value.device_id
                    raise Refused(
                        ErrorCode.FAILED_PRECONDITION, f"agent {agent_id!r} belongs to device {owner!r}"
                    )
                return None
            return AgentRecord(
                agent_id=agent_id,
                device_id=device_id,
                status=S.AGENT_STATUS_PENDING,
                updated_at=time.time(),
                schema_version=RECORD_VERSION,
            )

        await self.store.update(agent_id, change)

    async def all(self) -> list[hub_pb2.AgentRecord]:
        """Every agent, least recently updated first."""
        return sorted((s.value for s in await self.store.list()), key=lambda r: r.updated_at)

    async def apply(self, event: events_pb2.EdgeEvent) -> None:
        await self.apply_batch([event])

    async def apply_batch(self, events: list[events_pb2.EdgeEvent]) -> list[Refusal]:
        """One record write per agent: the last of its events in the batch that its owner at the
        current epoch sent (events of a device come in sequence order, and a record is a function of
        the event that wrote it). Each record is written with compare-and-set, so a migration moving
        the agent meanwhile is never overwritten; the agents' writes go out together (each is a
        separate key, and the server syncs each put to disk). Returns the events ``fence`` refused,
        with the reason (a stale copy of a migrated agent, another device's agent)."""
        by_agent: dict[str, list[events_pb2.EdgeEvent]] = {}
        for event in events:
            by_agent.setdefault(event.agent_id, []).append(event)
        refused = await asyncio.gather(*(self._apply_agent(evs) for evs in by_agent.values()))
        return [r for rs in refused for r in rs]

    async def _apply_agent(self, events: list[events_pb2.EdgeEvent]) -> list[Refusal]:
        refused: list[Refusal] = []

        def change(found: Stored[hub_pb2.AgentRecord] | None) -> hub_pb2.AgentRecord | None:
            new, refused[:] = _applied(found.value if found is not None else None, events)
            return new

        await self.store.update(events[0].agent_id, change, attempts=APPLY_ATTEMPTS)
        return refused

    async def transfer(
        self, agent_id: str, from_epoch: int, to_epoch: int, device: str, step: int, migration_id: str
    ) -> bool:
        """Give the agent to ``device`` from ``step`` on with ``to_epoch`` (compare-and-set, the
        migration's commit point). True also when it was done before; False when the record is at
        neither epoch (it moved on without this migration) or there is none."""
        moved = False

        def change(found: Stored[hub_pb2.AgentRecord] | None) -> hub_pb2.AgentRecord | None:
            nonlocal moved
            record = found.value if found is not None else None
            moved = record is not None and record.epoch in (from_epoch, to_epoch)
            if record is None or record.epoch != from_epoch:
                return None
            new = AgentRecord()
            new.CopyFrom(record)
            if not new.epochs:
                new.epochs.add(epoch=record.epoch, device=record.device_id, from_step=0)
            new.epochs.add(epoch=to_epoch, device=device, from_step=step)
            new.epoch, new.device_id, new.step = to_epoch, device, step
            new.migration_id, new.updated_at = migration_id, time.time()
            return new

        await self.store.update(agent_id, change)
        return moved
