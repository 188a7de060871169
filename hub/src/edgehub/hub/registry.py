"""The fleet registry's agent records, kept in JetStream KV (``edgehub-agents``) so any hub process
can read and update them.

Each applied event updates its agent's record: owner device, epoch, status, step, and the device
sequence of the event that wrote it. Events of one device arrive in order, so a record only moves
forward; replaying an event is harmless (the record is rewritten with the same content).
"""

from __future__ import annotations

import json
import time
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from edgehub.protocol.v1 import agent_pb2, events_pb2
from edgehub.sync import kv_key
from edgehub.sync.streams import AGENTS, DEVICES

S = agent_pb2


def status_name(status: int) -> str:
    return S.AgentStatus.Name(status).removeprefix("AGENT_STATUS_").lower()  # type: ignore[arg-type]


class _Records:
    """JSON records in one KV bucket."""

    bucket = ""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self._kv: KeyValue | None = None

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self.js.key_value(self.bucket)
        return self._kv

    async def all(self) -> list[dict[str, Any]]:
        kv = await self._bucket()
        try:
            keys = await kv.keys()
        except Exception:  # an empty bucket raises NoKeysError
            return []
        records = [await self.get_key(kv, k) for k in keys]
        return [r for r in records if r]

    @staticmethod
    async def get_key(kv: KeyValue, key: str) -> dict[str, Any] | None:
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            return None
        record: dict[str, Any] = json.loads(entry.value or b"{}")
        return record


class DeviceRegistry(_Records):
    """Device twins as the devices report them (``edgehub-devices``); online = a recent heartbeat."""

    bucket = DEVICES.name
    MISSED_BEATS = 3

    async def all(self, now: float | None = None) -> list[dict[str, Any]]:
        now = time.time() if now is None else now
        records = await super().all()
        for r in records:
            age = now - float(r.get("sent_at", 0))
            r["last_seen_s"] = round(age, 1)
            r["online"] = r.get("state") == "running" and age <= self.MISSED_BEATS * float(
                r.get("heartbeat_s", 5)
            )
        return sorted(records, key=lambda r: str(r["device_id"]))


class AgentRegistry(_Records):
    bucket = AGENTS.name

    async def apply(self, event: events_pb2.EdgeEvent) -> None:
        step = event.step
        record = {
            "agent_id": event.agent_id,
            "device_id": event.device_id,
            "epoch": event.epoch,
            "status": status_name(step.status),
            "step": step.step,
            "last_event": step.event_id,
            "device_seq": event.seq,
            "updated_at": time.time(),
        }
        if step.kind == S.STEP_KIND_END or step.status in (S.AGENT_STATUS_FINISHED, S.AGENT_STATUS_FAILED):
            record["detail"] = step.detail[:500]
        kv = await self._bucket()
        await kv.put(kv_key(event.agent_id), json.dumps(record).encode())

    async def get(self, agent_id: str) -> dict[str, Any] | None:
        return await self.get_key(await self._bucket(), kv_key(agent_id))

    async def all(self) -> list[dict[str, Any]]:
        return sorted(await super().all(), key=lambda r: float(r["updated_at"]))
