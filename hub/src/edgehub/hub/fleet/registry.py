"""The fleet registry's agent records, kept in JetStream KV (``edgehub-agents``) so any hub process
can read and update them, and the device twins the edges put in ``edgehub-devices``.

Each applied event updates its agent's record: owner device, epoch, status, step, and the device
sequence of the event that wrote it. Events of one device arrive in order, so a record only moves
forward; replaying an event is harmless (the record is rewritten with the same content).

``DeviceRegistry`` reads the twins on request (the API); ``DeviceWatcher`` keeps the hub's live view
of them from a KV watch and measures how late heartbeats arrive. Both judge "online" with ``is_online``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from prometheus_client import CollectorRegistry, Gauge, Histogram

from edgehub.protocol.ids import kv_key
from edgehub.protocol.v1 import agent_pb2, events_pb2
from edgehub.sync.streams import AGENTS, DEVICES

S = agent_pb2
log = logging.getLogger("edgehub.hub.fleet.registry")

MISSED_BEATS = 3
"""A device is offline once this many heartbeats in a row have not arrived."""
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)


def status_name(status: int) -> str:
    return S.AgentStatus.Name(status).removeprefix("AGENT_STATUS_").lower()  # type: ignore[arg-type]


def fence(record: dict[str, Any] | None, event: events_pb2.EdgeEvent) -> str:
    """Why ``event`` may not be applied to the agent ``record`` describes ('' when it may).

    Without a migration history the owner is the device of the record. With one (``epochs``: the
    epoch, its device and the step it started at, oldest first), an event is accepted only from the
    device that owned its epoch and for that epoch's steps: the source's late events from before the
    hand-over are history; anything a stale copy did after it is refused."""
    if record is None:
        return ""
    history = record.get("epochs")
    if not history:
        owner, epoch = str(record.get("device_id", "")), int(record.get("epoch", 0))
        if event.device_id != owner:
            return f"agent {event.agent_id} belongs to device {owner} (epoch {epoch}), not {event.device_id}"
        return ""
    for i, entry in enumerate(history):
        if int(entry["epoch"]) != event.epoch:
            continue
        if entry["device"] != event.device_id:
            return (
                f"agent {event.agent_id} epoch {event.epoch} belongs to device {entry['device']}, "
                f"not {event.device_id}"
            )
        step = event.step.step if event.WhichOneof("body") == "step" else int(entry["from_step"])
        end = int(history[i + 1]["from_step"]) if i + 1 < len(history) else None
        if step < int(entry["from_step"]) or (end is not None and step >= end):
            return (
                f"stale epoch: agent {event.agent_id} step {step} at epoch {event.epoch} from "
                f"{event.device_id}, but epoch {history[-1]['epoch']} owns it "
                f"from step {history[-1]['from_step']}"
            )
        return ""
    return f"unknown epoch {event.epoch} for agent {event.agent_id} (known: {[e['epoch'] for e in history]})"


class JsonRecords:
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
        # a key written while the listing runs can be listed twice
        records = [await self.get_key(kv, k) for k in dict.fromkeys(keys)]
        return [r for r in records if r]

    @staticmethod
    async def get_key(kv: KeyValue, key: str) -> dict[str, Any] | None:
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            return None
        record: dict[str, Any] = json.loads(entry.value or b"{}")
        return record


def heartbeat_age(twin: dict[str, Any], now: float) -> float:
    """Seconds since the device sent ``twin`` (by the device's clock)."""
    return now - float(twin.get("sent_at", 0))


def is_online(twin: dict[str, Any], now: float) -> bool:
    """Running, and its last heartbeat is at most ``MISSED_BEATS`` intervals old."""
    beats = MISSED_BEATS * float(twin.get("heartbeat_s", 5))
    return twin.get("state") == "running" and heartbeat_age(twin, now) <= beats


class DeviceRegistry(JsonRecords):
    """Device twins as the devices report them (``edgehub-devices``); online = a recent heartbeat."""

    bucket = DEVICES.name
    MISSED_BEATS = MISSED_BEATS

    async def all(self, now: float | None = None) -> list[dict[str, Any]]:
        now = time.time() if now is None else now
        records = await super().all()
        for r in records:
            r["last_seen_s"] = round(heartbeat_age(r, now), 1)
            r["online"] = is_online(r, now)
        return sorted(records, key=lambda r: str(r["device_id"]))


@dataclass(frozen=True, slots=True)
class SeenTwin:
    """A device twin in the hub's live view."""

    twin: dict[str, Any]
    """The record as the device last put it (``sent_at``, ``heartbeat_s``, ``state``, ...)."""
    seen_at: float
    """When this hub received it (hub clock, ``time.time()``)."""
    revision: int
    """Its KV revision (the bucket stream's sequence): a re-watch skips what the view already has."""


class DeviceWatcher:
    """The hub's live view of the device twins (device id -> ``SeenTwin``), from a watch on the
    ``edgehub-devices`` bucket, with three metrics on the registry passed in:

    - ``edgehub_hub_heartbeat_lag_seconds`` (histogram): per update, hub receive time minus the
      device's ``sent_at``, so it includes any clock skew between the two (clamped at 0). A watch's
      initial snapshot is not timed (a twin may be days old), except newer twins of devices already in
      the view: updates missed while the watch was down, whose lag is real.
    - ``edgehub_hub_heartbeat_queue_seconds`` (histogram): the hub's own share of it, hub receive
      time minus the time the server stored the twin (as ``edgehub_hub_event_queue_seconds``).
    - ``edgehub_hub_devices_online`` (gauge): ``is_online`` over the view, computed at scrape time.

    ``run(stop)`` re-creates the watch after any error (server restart, lost connection) every
    ``retry_s``, logging a repeated error once. nats-py's ordered consumer already re-subscribes after
    missed idle heartbeats; as a backstop, when no update arrived for ``idle_check_s`` the watcher asks
    the bucket for its last sequence and re-watches if the bucket moved on without it.
    """

    def __init__(
        self,
        js: JetStreamContext,
        metrics: CollectorRegistry,
        *,
        retry_s: float = 0.5,
        idle_check_s: float = 5.0,
    ) -> None:
        self.js = js
        self.retry_s = retry_s
        self.idle_check_s = idle_check_s
        self.view: dict[str, SeenTwin] = {}
        self.synced = False
        """The view holds every twin the bucket had when the first watch started (then stays live)."""
        self.watches = 0
        """How many watches were created (1 + re-watches)."""
        self._ids: dict[str, str] = {}  # KV key -> device id (deletes carry only the key)
        self._horizon = 0  # the highest bucket sequence the current watch has accounted for
        self._last_error = ""
        self.lag = Histogram(
            "edgehub_hub_heartbeat_lag_seconds",
            "Heartbeat lag: hub receive time minus the device's sent_at",
            buckets=LAG_BUCKETS,
            registry=metrics,
        )
        self.queue = Histogram(
            "edgehub_hub_heartbeat_queue_seconds",
            "From NATS storing a twin to the hub receiving it",
            buckets=LAG_BUCKETS,
            registry=metrics,
        )
        self.online = Gauge(
            "edgehub_hub_devices_online",
            "Devices with a recent heartbeat (as the hub sees them)",
            registry=metrics,
        )
        self.online.set_function(self.count_online)

    def records(self, now: float | None = None) -> list[dict[str, Any]] | None:
        """The twins as ``DeviceRegistry.all`` returns them, from the live view (no store reads);
        None until the first snapshot is complete."""
        if not self.synced:
            return None
        now = time.time() if now is None else now
        out = []
        for seen in list(self.view.values()):
            if not isinstance(seen.twin, dict) or not isinstance(seen.twin.get("device_id"), str):
                continue  # what a device wrote is input: a twin without an id lists nothing
            r = dict(seen.twin)
            r["last_seen_s"] = round(heartbeat_age(r, now), 1)
            r["online"] = is_online(r, now)
            out.append(r)
        return sorted(out, key=lambda r: str(r.get("device_id", "")))

    def count_online(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        seen = list(self.view.values())  # one C-level copy: the metrics thread reads while the loop writes
        return sum(is_online(s.twin, now) for s in seen)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._watch(stop)
            except Exception as exc:  # server restarting, connection re-established, bucket missing
                error = f"{exc.__class__.__name__}: {exc}"
                level = logging.DEBUG if error == self._last_error else logging.WARNING
                log.log(level, "device watch failed (%s); re-watching", error)
                self._last_error = error
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.retry_s)

    async def _last_seq(self, kv: KeyValue) -> int:
        return int((await kv.status()).stream_info.state.last_seq)

    async def _watch(self, stop: asyncio.Event) -> None:
        kv = await self.js.key_value(DEVICES.name)
        self._horizon = await self._last_seq(kv)  # everything up to here is in the snapshot or superseded
        watcher = await kv.watchall()
        self.watches += 1
        live, idle_since = False, time.monotonic()
        try:
            while not stop.is_set():
                try:
                    entry = await watcher.updates(timeout=0.5)  # short: notice ``stop`` promptly
                except nats.errors.TimeoutError:
                    if time.monotonic() - idle_since >= self.idle_check_s:
                        await self._check(kv)
                        idle_since = time.monotonic()
                    continue
                idle_since = time.monotonic()
                if entry is None:  # the end of the initial snapshot
                    live = True
                    self.synced = True
                    continue
                self._apply(entry, live)
                self._last_error = ""
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()

    async def _check(self, kv: KeyValue) -> None:
        last = await self._last_seq(kv)  # raises while the server is unreachable
        if last > self._horizon:
            raise RuntimeError(f"the watch is stale: the bucket is at {last}, the watch at {self._horizon}")

    def _apply(self, entry: KeyValue.Entry, live: bool) -> None:
        revision = entry.revision or 0
        self._horizon = max(self._horizon, revision)
        device_id = self._ids.get(entry.key, entry.key)
        known = self.view.get(device_id)
        if known is not None and revision <= known.revision:
            return  # a re-watch's snapshot: already in the view
        if entry.operation in (KV_DEL, KV_PURGE):
            self.view.pop(device_id, None)
            return
        seen_at = time.time()
        try:
            twin: dict[str, Any] = json.loads(entry.value or b"{}")
            device_id = str(twin.get("device_id") or entry.key)
            sent_at = float(twin["sent_at"]) if "sent_at" in twin else None
        except (ValueError, TypeError, AttributeError) as exc:  # not JSON, not an object, bad sent_at
            log.debug("twin %s unreadable: %s", entry.key, exc)
            return
        self._ids[entry.key] = device_id
        self.view[device_id] = SeenTwin(twin, seen_at, revision)
        if not (live or known is not None):
            return
        if sent_at is not None:
            self.lag.observe(max(0.0, seen_at - sent_at))
        stored: Any = entry.created  # nats-py types it int; it is the message's datetime
        if stored is not None:
            self.queue.observe(max(0.0, seen_at - stored.timestamp()))


class AgentRegistry(JsonRecords):
    bucket = AGENTS.name

    async def apply(self, event: events_pb2.EdgeEvent) -> None:
        await self.apply_batch([event])

    async def apply_batch(self, events: list[events_pb2.EdgeEvent]) -> list[tuple[events_pb2.EdgeEvent, str]]:
        """One record write per agent: the last of its events in the batch that its owner at the
        current epoch sent (events of a device come in sequence order, and a record is a function of
        the event that wrote it). Each record is read and written with compare-and-set, so a
        migration moving the agent meanwhile is never overwritten; the agents' reads and writes go out
        together (each is a separate key, and the server syncs each put to disk). Returns the events
        ``fence`` refused, with the reason (a stale copy of a migrated agent, another device's agent)."""
        by_agent: dict[str, list[events_pb2.EdgeEvent]] = {}
        for event in events:
            by_agent.setdefault(event.agent_id, []).append(event)
        kv = await self._bucket()
        refused = await asyncio.gather(*(self._apply_agent(kv, evs) for evs in by_agent.values()))
        return [r for rs in refused for r in rs]

    async def _apply_agent(
        self, kv: KeyValue, events: list[events_pb2.EdgeEvent], attempts: int = 8
    ) -> list[tuple[events_pb2.EdgeEvent, str]]:
        key = kv_key(events[0].agent_id)
        for _ in range(attempts):
            try:
                entry = await kv.get(key)
                record: dict[str, Any] | None = json.loads(entry.value or b"{}")
                revision: int | None = entry.revision
            except KeyNotFoundError:
                record, revision = None, None
            refused, latest = [], None
            for event in events:
                reason = fence(record, event)
                if reason:
                    refused.append((event, reason))
                elif record is None or event.epoch >= int(record.get("epoch", 0)):
                    latest = event  # an older epoch's late event is history: it moves no record
            if latest is None:
                return refused
            new = self._record(latest)
            for kept in ("epochs", "migration"):
                if record is not None and kept in record:
                    new[kept] = record[kept]
            try:
                if revision is None:
                    await kv.create(key, json.dumps(new).encode())
                else:
                    await kv.update(key, json.dumps(new).encode(), last=revision)
                return refused
            except KeyWrongLastSequenceError:
                continue  # a migration moved it (or another hub wrote it): read again
        raise RuntimeError(f"agent record {key}: {attempts} conflicting writes in a row")

    async def transfer(
        self, agent_id: str, from_epoch: int, to_epoch: int, device: str, step: int, migration_id: str
    ) -> bool:
        """Give the agent to ``device`` from ``step`` on with ``to_epoch`` (compare-and-set, the
        migration's commit point). True also when it was done before; False when the record is at
        neither epoch (it moved on without this migration)."""
        kv = await self._bucket()
        key = kv_key(agent_id)
        while True:
            entry = await kv.get(key)
            record: dict[str, Any] = json.loads(entry.value or b"{}")
            epoch = int(record.get("epoch", 0))
            if epoch == to_epoch:
                return True
            if epoch != from_epoch:
                return False
            history = record.get("epochs") or [
                {"epoch": epoch, "device": record["device_id"], "from_step": 0}
            ]
            history.append({"epoch": to_epoch, "device": device, "from_step": step})
            record.update(
                epochs=history,
                epoch=to_epoch,
                device_id=device,
                migration=migration_id,
                step=step,
                updated_at=time.time(),
            )
            try:
                await kv.update(key, json.dumps(record).encode(), last=entry.revision)
                return True
            except KeyWrongLastSequenceError:
                continue

    @staticmethod
    def _record(event: events_pb2.EdgeEvent) -> dict[str, Any]:
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
        return record

    async def get(self, agent_id: str) -> dict[str, Any] | None:
        return await self.get_key(await self._bucket(), kv_key(agent_id))

    async def all(self) -> list[dict[str, Any]]:
        return sorted(await super().all(), key=lambda r: float(r["updated_at"]))
