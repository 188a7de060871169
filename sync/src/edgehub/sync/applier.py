"""Hub side: apply each device's events exactly once and in order, across any number of hub processes.

The hub processes share one durable consumer. Strict per-device order and a shared pull consumer do
not mix (messages are handed out alternately, so every process sees gaps), so the consumer is
leased: one process applies at a time and another takes over within a lease TTL when it dies
(``lease``). The record below keeps the hand-over exact even if two overlap for a moment.
The record of what was applied is the hub's own, not the server's de-duplication window (which is
time-limited): per device, the outbox sequence applied last, in the ``edgehub-applied`` KV bucket,
advanced with compare-and-set. For an event with sequence ``n`` from a device whose record says ``m``:

- ``n <= m``: already applied (a resend or a redelivery) -> acknowledged, not applied again;
- ``n == m + 1``: applied, then the record moves to ``n`` with CAS; if another hub moved it first,
  the event is treated as applied by that hub (the apply callback is idempotent, keyed by event id);
- ``n > m + 1``: an earlier event of that device is still on its way: usually another hub is applying
  it right now (both pulled neighbouring batches), so this hub waits for the record to reach ``n - 1``
  (up to ``gap_wait_s``); if it does not, the message is negatively acknowledged with a short delay
  and comes back later. Per-device order holds either way.

A message that cannot be decoded, is too large, has an unknown schema version, or whose subject does
not match its content goes to the dead-letter stream with the reason in the ``Edgehub-Reason``
header, and is acknowledged: it never crashes the consumer or blocks the ones behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from edgehub.protocol import subjects
from edgehub.protocol.v1 import events_pb2

from .errors import MessageRejected
from .lease import Lease
from .pull import pull_forever
from .streams import APPLIED, HUB_EVENTS_CONSUMER, MAX_EVENT_BYTES

log = logging.getLogger("edgehub.sync.applier")

SUPPORTED_EVENT_VERSIONS = frozenset({1})
Apply = Callable[[events_pb2.EdgeEvent], Awaitable[None]]
ApplyBatch = Callable[[list[events_pb2.EdgeEvent]], Awaitable[None]]
"""Applies a batch's admitted events (in per-device sequence order) at once: lets the registry write
one record per agent per batch instead of one per event."""
Observe = Callable[[events_pb2.EdgeEvent, Msg], None]
"""Called after each event is applied (metrics: lag from the step's time and the stream's)."""
_KV_KEY = re.compile(r"^[-/_=.a-zA-Z0-9]+$")


def kv_key(device_id: str) -> str:
    return device_id if _KV_KEY.match(device_id) else "x-" + device_id.encode().hex()


def decode(msg: Msg) -> events_pb2.EdgeEvent:
    """The event in ``msg``, or MessageRejected with the reason."""
    if len(msg.data) > MAX_EVENT_BYTES:
        raise MessageRejected(f"oversized: {len(msg.data)} bytes > {MAX_EVENT_BYTES}")
    try:
        event = events_pb2.EdgeEvent.FromString(msg.data)
    except DecodeError as exc:
        raise MessageRejected(f"malformed: not an EdgeEvent ({exc})") from None
    if event.schema_version not in SUPPORTED_EVENT_VERSIONS:
        raise MessageRejected(f"unknown schema version {event.schema_version}")
    try:
        device, agent = subjects.parse_events(msg.subject)
    except ValueError as exc:
        raise MessageRejected(str(exc)) from None
    if (device, agent) != (event.device_id, event.agent_id) or event.seq < 1:
        raise MessageRejected(
            f"subject says {device}/{agent} but the event says "
            f"{event.device_id}/{event.agent_id} seq {event.seq}"
        )
    return event


async def _propagate(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


@dataclass
class _Device:
    """One device's position during a batch."""

    recorded: int
    """What the KV record says (as read, or as waited for)."""
    revision: int | None
    last: int = -1
    """The last sequence applied in this batch (starts at ``recorded``)."""
    blocked: bool = False

    def __post_init__(self) -> None:
        if self.last < 0:
            self.last = self.recorded


@dataclass
class ApplierStats:
    applied: int = 0
    duplicates: int = 0
    deferred: int = 0
    dead_lettered: int = 0


class EventApplier:
    """Consumes the events stream and applies each event once (see the module docstring)."""

    def __init__(
        self,
        js: JetStreamContext,
        apply: Apply,
        *,
        durable: str = HUB_EVENTS_CONSUMER,
        batch: int = 256,
        gap_delay_s: float = 0.2,
        gap_wait_s: float | None = None,
        ack_wait_s: float = 10.0,
        lease: Lease | None = None,
        observe: Observe | None = None,
        apply_batch: ApplyBatch | None = None,
    ) -> None:
        self.js = js
        self.apply = apply
        self.apply_batch = apply_batch or self._apply_each
        self.observe = observe
        self.durable = durable
        self.batch = batch
        self.gap_delay_s = gap_delay_s
        # without a lease other hubs may be applying the gap right now: worth waiting for; with one,
        # a gap is a message held by a dead holder, back after ack_wait: defer at once
        self.gap_wait_s = gap_wait_s if gap_wait_s is not None else (0.0 if lease else 2.0)
        self.ack_wait_s = ack_wait_s
        self.lease = lease
        """None: consume unconditionally (a single hub, tests)."""
        self.stats = ApplierStats()
        self._kv: KeyValue | None = None

    async def _applied(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self.js.key_value(APPLIED.name)
        return self._kv

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        return await self.js.pull_subscribe(
            subjects.ALL_EVENTS,
            durable=self.durable,
            stream=subjects.EVENTS_STREAM,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=self.ack_wait_s,
                max_ack_pending=20_000,
            ),
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` (while holding the lease, if there is one)."""
        if self.lease is None:
            await self._consume(stop)
            return
        while not stop.is_set():
            try:
                acquired = await self.lease.acquire()
            except Exception as exc:
                log.warning("lease %s: %s", self.lease.name, exc)
                acquired = False
            if not acquired:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.lease.ttl_s / 3)
                continue
            halt = asyncio.Event()
            keeper = asyncio.create_task(self.lease.hold(halt, stop))
            watcher = asyncio.create_task(_propagate(stop, halt))
            try:
                await self._consume(halt)
            finally:
                keeper.cancel()
                watcher.cancel()
                await asyncio.gather(keeper, watcher, return_exceptions=True)
                await self.lease.release()

    async def _consume(self, stop: asyncio.Event) -> None:
        """Consume until ``stop``; survives server restarts and lost consumers (it re-subscribes)."""
        await pull_forever(self._subscribe, self.handle_batch, stop, batch=self.batch, log=log, what="events")

    async def handle_batch(self, msgs: list[Msg]) -> None:
        """Apply a fetched batch: one KV read and one CAS write per device, then the acks.

        Within the batch, each device's events are applied in sequence order (a redelivered event
        may arrive after newer ones). Acks go out only after the record moved, so a crash anywhere
        leaves the events unacknowledged (redelivered, then recognised as applied or applied again
        idempotently), never acknowledged but unrecorded.
        """
        kv = await self._applied()
        devices: dict[str, _Device] = {}
        done: list[Msg] = []
        decoded: list[tuple[str, events_pb2.EdgeEvent, Msg]] = []
        for msg in msgs:
            try:
                event = decode(msg)
            except MessageRejected as rejected:
                await self._dead_letter(msg, rejected.reason)
                continue
            decoded.append((kv_key(event.device_id), event, msg))
        # redeliveries arrive after newer messages: per device, sequence order is what counts
        decoded.sort(key=lambda d: (d[0], d[1].seq))
        admitted: list[tuple[events_pb2.EdgeEvent, Msg]] = []
        for key, event, msg in decoded:
            if key not in devices:
                devices[key] = _Device(*await self._last(kv, key))
            if await self._admit(kv, key, devices[key], event, msg):
                devices[key].last = event.seq
                admitted.append((event, msg))
                done.append(msg)
            elif not devices[key].blocked and event.seq <= devices[key].last:
                done.append(msg)
        if admitted:  # applied before the records move and before any ack
            await self.apply_batch([event for event, _ in admitted])
            self.stats.applied += len(admitted)
            if self.observe is not None:
                for event, msg in admitted:
                    self.observe(event, msg)
        for key, dev in devices.items():
            if dev.last > dev.recorded:
                await self._record(kv, key, dev)
        for msg in done:
            await msg.ack()

    async def _apply_each(self, events: list[events_pb2.EdgeEvent]) -> None:
        for event in events:
            await self.apply(event)

    async def _admit(
        self, kv: KeyValue, key: str, dev: _Device, event: events_pb2.EdgeEvent, msg: Msg
    ) -> bool:
        """True: apply it now. False: a duplicate (caller acks) or deferred (nak'd here)."""
        if dev.blocked:
            await self._defer(msg)
            return False
        if event.seq <= dev.last:
            self.stats.duplicates += 1
            return False
        if event.seq > dev.last + 1 and dev.last == dev.recorded:
            # nothing applied for this device in this batch yet: another hub may be applying the gap
            dev.recorded, dev.revision = await self._wait_for(kv, key, event.seq - 1)
            dev.last = dev.recorded
            if event.seq <= dev.last:
                self.stats.duplicates += 1
                return False
        if event.seq == dev.last + 1:
            return True
        dev.blocked = True  # keep this device's order: everything after the gap waits too
        await self._defer(msg)
        return False

    async def _defer(self, msg: Msg) -> None:
        self.stats.deferred += 1
        await msg.nak(delay=self.gap_delay_s)

    async def _record(self, kv: KeyValue, key: str, dev: _Device) -> None:
        try:
            if dev.revision is None:
                await kv.create(key, str(dev.last).encode())
            else:
                await kv.update(key, str(dev.last).encode(), last=dev.revision)
        except KeyWrongLastSequenceError:
            # another hub advanced it concurrently; the applies were idempotent, so nothing is lost
            log.info("device %s: seq %d recorded by another hub", key, dev.last)

    async def _wait_for(self, kv: KeyValue, key: str, seq: int) -> tuple[int, int | None]:
        deadline = asyncio.get_running_loop().time() + self.gap_wait_s
        delay = 0.002
        while True:
            last, revision = await self._last(kv, key)
            if last >= seq or asyncio.get_running_loop().time() > deadline:
                return last, revision
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def _last(self, kv: KeyValue, key: str) -> tuple[int, int | None]:
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            return 0, None
        return int(entry.value or b"0"), entry.revision

    async def _dead_letter(self, msg: Msg, reason: str) -> None:
        log.warning("dead-lettering a message from %s: %s", msg.subject, reason)
        headers = {"Edgehub-Reason": reason[:500], "Edgehub-Subject": msg.subject}
        await self.js.publish(subjects.deadletter("events"), msg.data[:MAX_EVENT_BYTES], headers=headers)
        self.stats.dead_lettered += 1
        await msg.ack()
