"""Hub side: apply each device's events exactly once and in order, across any number of hub processes.

Every hub process pulls from one shared durable consumer, so the stream's work is split between them.
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

import nats.errors
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from edgehub.protocol import subjects
from edgehub.protocol.v1 import events_pb2

from .errors import MessageRejected
from .streams import APPLIED, HUB_EVENTS_CONSUMER, MAX_EVENT_BYTES

log = logging.getLogger("edgehub.sync.applier")

SUPPORTED_EVENT_VERSIONS = frozenset({1})
Apply = Callable[[events_pb2.EdgeEvent], Awaitable[None]]
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
        gap_wait_s: float = 2.0,
        ack_wait_s: float = 30.0,
    ) -> None:
        self.js = js
        self.apply = apply
        self.durable = durable
        self.batch = batch
        self.gap_delay_s = gap_delay_s
        self.gap_wait_s = gap_wait_s
        self.ack_wait_s = ack_wait_s
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
        """Consume until ``stop``; survives server restarts and lost consumers (it re-subscribes)."""
        sub: JetStreamContext.PullSubscription | None = None
        while not stop.is_set():
            try:
                if sub is None:
                    sub = await self._subscribe()
                msgs = await sub.fetch(self.batch, timeout=0.5)
            except nats.errors.TimeoutError:
                continue
            except Exception as exc:  # server restarting, consumer lost, connection re-established
                log.warning("fetch failed (%s: %s); re-subscribing", exc.__class__.__name__, exc)
                if sub is not None:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
                sub = None
                await asyncio.sleep(0.2)
                continue
            for msg in msgs:
                try:
                    await self.handle(msg)
                except Exception as exc:  # left unacknowledged: redelivered after ack_wait
                    log.warning("could not apply %s (%s: %s)", msg.subject, exc.__class__.__name__, exc)
                    break

    async def handle(self, msg: Msg) -> None:
        try:
            event = decode(msg)
        except MessageRejected as rejected:
            await self._dead_letter(msg, rejected.reason)
            return
        kv = await self._applied()
        key = kv_key(event.device_id)
        last, revision = await self._last(kv, key)
        if event.seq <= last:
            self.stats.duplicates += 1
            await msg.ack()
            return
        if event.seq > last + 1:
            last, revision = await self._wait_for(kv, key, event.seq - 1)
            if last < event.seq - 1:
                self.stats.deferred += 1
                await msg.nak(delay=self.gap_delay_s)
                return
            if event.seq <= last:
                self.stats.duplicates += 1
                await msg.ack()
                return
        await self.apply(event)
        try:
            if revision is None:
                await kv.create(key, str(event.seq).encode())
            else:
                await kv.update(key, str(event.seq).encode(), last=revision)
        except KeyWrongLastSequenceError:
            # another hub advanced it concurrently; our apply was idempotent, so nothing is lost
            log.info("device %s: seq %d recorded by another hub", event.device_id, event.seq)
        self.stats.applied += 1
        await msg.ack()

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
