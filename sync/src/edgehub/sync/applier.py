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

Messages come through ``_Pull``, not nats-py's ``PullSubscription.fetch``: fetch waits for each
message in an asyncio task of its own (about 60 µs a message on the 2-core VM, more than the rest of
the hub's work per event) and asks the server for nothing while the caller applies a batch; ``_Pull``
keeps one pull request open on its own inbox, collects what the server delivers, and asks for the
next batch as soon as the open request is spent, so the server delivers while the hub applies
(docs/benchmarks.md, bench/sync).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from edgehub.protocol import subjects
from edgehub.protocol.ids import InvalidId, check_ids, id_of_key, shown
from edgehub.protocol.times import InvalidTime, check_times
from edgehub.protocol.v1 import events_pb2

from .errors import MessageRejected, SyncError, dead_letter_headers
from .lease import Lease
from .records import RecordConflict, RecordStore, TextCodec
from .streams import APPLIED, HUB_EVENTS_CONSUMER, MAX_EVENT_BYTES

log = logging.getLogger("edgehub.sync.applier")

SUPPORTED_EVENT_VERSIONS = frozenset({1})
_AGENT_BODIES = ("step", "task_result")
"""Bodies that name their agent again: it must be the envelope's (the one the subject authenticates).
A device's result naming another device's task agent failed or finished that task (found by the
``events`` fuzz target)."""
Apply = Callable[[events_pb2.EdgeEvent], Awaitable[None]]
ApplyBatch = Callable[[list[events_pb2.EdgeEvent]], Awaitable[None]]
"""Applies a batch's admitted events (in per-device sequence order) at once: lets the registry write
one record per agent per batch instead of one per event."""
Observe = Callable[[events_pb2.EdgeEvent, Msg], None]
"""Called after each event is applied (metrics: lag from the step's time and the stream's)."""


@functools.lru_cache(maxsize=65_536)
def _parse_subject(subject: str) -> tuple[str, str]:
    """``subjects.parse_events``, remembered: a fleet sends from a bounded set of agents."""
    return subjects.parse_events(subject)


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
        device, agent = _parse_subject(msg.subject)
    except ValueError as exc:
        raise MessageRejected(str(exc)) from None
    if (device, agent) != (event.device_id, event.agent_id) or event.seq < 1:
        raise MessageRejected(
            f"subject says {device}/{agent} but the event says "
            f"{shown(event.device_id)}/{shown(event.agent_id)} seq {event.seq}"
        )
    body = event.WhichOneof("body")
    if body in _AGENT_BODIES and (named := getattr(event, body).agent_id) != agent:
        # the fence and the registry judge the envelope's agent; the goal intake the result's: one agent
        raise MessageRejected(f"the {body} names agent {shown(named, 80)}, the event's agent is {agent}")
    try:
        check_ids(event)  # every id the payload holds (a task's, a migration's) before the hub uses one
        check_times(event)  # a time out of range raises wherever it is read: refused whole, here
    except (InvalidId, InvalidTime) as exc:
        raise MessageRejected(exc.message) from None
    return event


async def _propagate(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


_REQUEST_ENDS = frozenset({"batch completed", "message size exceeds maxbytes"})
"""409 descriptions that only say a pull request is over (ask for the next batch at once)."""


class _PullBroken(SyncError):
    """The consumer is gone (deleted, or the stream is missing): subscribe again."""


class _Pull:
    """A durable pull consumer read through this process's own inbox.

    One pull request is open at a time (``batch`` messages, ``max_bytes``, expiring after
    ``expires_s``), each answered on its own subject under this process's inbox; stream messages are
    collected as they arrive and ``take`` hands them out in batches. A new request goes out as soon as
    the open one is spent (its last message, or a status ending it) while fewer than ``batch``
    messages wait to be taken, so the server delivers the next batch while the caller applies this
    one. Messages are never acknowledged here.

    Stream messages carry their ack subject as reply; status messages from the server (request
    expired or completed, consumer deleted, no responders) carry none, so a ``Status`` header a device
    put on an event cannot pass for one; a status about an earlier request (answered on its own
    subject) does not end the open one.
    """

    MAX_BYTES = 16 * 1024 * 1024
    """Per request: bounds what waits in memory (each event is at most MAX_EVENT_BYTES)."""

    def __init__(
        self, js: JetStreamContext, durable: str, batch: int, *, expires_s: float = 5.0, poll_s: float = 0.5
    ) -> None:
        self.js = js
        # nats-py has no public accessor for the connection of a JetStream context
        self.nc: Client = js._nc
        self.durable = durable
        self.batch = batch
        self.expires_s = expires_s
        self.poll_s = poll_s
        self.wake = asyncio.Event()
        """Set when messages or a status arrived, or by whoever wants ``take`` to return at once."""
        self._next = f"{js._prefix}.CONSUMER.MSG.NEXT.{subjects.EVENTS_STREAM}.{durable}"
        self._sub: Subscription | None = None
        self._inbox = ""
        self._ready: list[Msg] = []
        self._requests = 0
        self._current = ""
        """The reply subject of the open request; empty: none is open."""
        self._open = 0
        """Messages the open request may still deliver."""
        self._expires_at = 0.0
        self._reconnects = 0
        self._pause_until = 0.0
        self._broken = ""

    async def open(self, config: ConsumerConfig) -> None:
        """Create the durable consumer if it does not exist (a running one keeps its config, as with
        ``pull_subscribe``) and subscribe to this process's inbox."""
        try:
            await self.js.consumer_info(subjects.EVENTS_STREAM, self.durable)
        except NotFoundError:
            await self.js.add_consumer(subjects.EVENTS_STREAM, config)
        self._inbox = self.nc.new_inbox()
        self._sub = await self.nc.subscribe(f"{self._inbox}.*", cb=self._on_msg)

    async def close(self) -> None:
        """Unsubscribe; what was delivered but not taken goes back to the consumer at once."""
        left, self._ready = self._ready, []
        with contextlib.suppress(Exception):  # the connection may be gone
            if self._sub is not None:
                await self._sub.unsubscribe()
            for msg in left:
                await msg.nak()

    @property
    def waiting(self) -> tuple[Msg, ...]:
        """Delivered, not yet taken."""
        return tuple(self._ready)

    async def take(self) -> list[Msg]:
        """Up to ``batch`` delivered messages; waits up to ``poll_s`` (or until ``wake``) for some."""
        if self._broken:
            raise _PullBroken(self._broken)
        await self._request_if_spent()
        if not self._ready:
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.poll_s)
            if self._broken:
                raise _PullBroken(self._broken)
        taken = self._ready[: self.batch]
        del self._ready[: self.batch]
        await self._request_if_spent()
        return taken

    async def _request_if_spent(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        lost = now > self._expires_at or self.nc.stats["reconnects"] != self._reconnects
        if (self._current and not lost) or len(self._ready) >= self.batch or now < self._pause_until:
            return
        # a request the server forgot (restart, reconnect) is replaced; a late answer to it only
        # delivers more messages, which are as good as any
        self._requests += 1
        self._current = f"{self._inbox}.{self._requests}"
        self._open = self.batch
        self._expires_at = now + self.expires_s + 1.0
        self._reconnects = self.nc.stats["reconnects"]
        request = {"batch": self.batch, "expires": int(self.expires_s * 1e9), "max_bytes": self.MAX_BYTES}
        await self.nc.publish(self._next, json.dumps(request).encode(), reply=self._current)

    async def _on_msg(self, msg: Msg) -> None:
        current = msg.subject == self._current
        if msg.reply:
            self._ready.append(msg)
            if current:
                self._open -= 1
                if self._open <= 0:
                    self._current = ""
                    await self._request_if_spent()
            self.wake.set()
            return
        headers = msg.headers or {}
        status, description = headers.get("Status", ""), headers.get("Description", "").strip()
        if status == "503" or description.lower() in ("consumer deleted", "consumer is push based"):
            self._broken = f"{status} {description or 'no responders'}".strip()
        elif not current or status == "100":  # about an earlier request; or a heartbeat
            return
        else:
            self._current = ""
            if status not in ("404", "408") and description.lower() not in _REQUEST_ENDS:
                # a limit or a leadership change: ask again, but not in a tight loop
                log.debug("events: pull request ended with %s %s", status, description)
                self._pause_until = asyncio.get_running_loop().time() + 0.2
            await self._request_if_spent()
        self.wake.set()


def _device_and_seq(item: tuple[str, int, events_pb2.EdgeEvent, Msg]) -> tuple[str, int]:
    return item[0], item[1]


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
        batch: int = 1024,
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
        self.applied = RecordStore(js, APPLIED.name, TextCodec())
        """Per device (key: its id), the sequence of the last event applied."""
        self.last_applied: dict[str, int] = {}
        """Per device this process handled events of while consuming, the sequence applied last (for
        the hub's lag metric); cleared when it stops consuming (another hub holds the lease)."""

    def _consumer_config(self) -> ConsumerConfig:
        # explicit acks, one per event, sent after the record moved: AckAll would let a later ack
        # cover an event deferred in this batch, or one a dead lease holder had not applied yet
        return ConsumerConfig(
            name=self.durable,
            durable_name=self.durable,
            filter_subject=subjects.ALL_EVENTS,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.ack_wait_s,
            max_ack_pending=20_000,
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
                self.last_applied.clear()  # the next holder's figures, not these stale ones

    async def _consume(self, stop: asyncio.Event, retry_s: float = 0.2) -> None:
        """Consume until ``stop``; survives server restarts and lost consumers (it re-subscribes).

        A batch whose handling raises is left unacknowledged: redelivered after the ack wait."""
        seeding = asyncio.create_task(self._seed_last_applied(), name="applied-seed")
        try:
            await self._consume_until(stop, retry_s)
        finally:
            seeding.cancel()
            await asyncio.gather(seeding, return_exceptions=True)

    async def _seed_last_applied(self) -> None:
        """The sequence applied last per device as the bucket holds it, so the lag metric has a series
        for every device from the moment this process consumes (after a lease handover too), not only
        once its next event arrives."""
        try:
            stored = await self.applied.list()
        except Exception as exc:  # the metric only: it fills in as events are applied
            log.warning("applied sequences not read (%s: %s)", exc.__class__.__name__, exc)
            return
        for record in stored:
            with contextlib.suppress(ValueError):
                device = id_of_key(record.key)
                self.last_applied[device] = max(self.last_applied.get(device, 0), int(record.value or "0"))

    async def _consume_until(self, stop: asyncio.Event, retry_s: float) -> None:
        last_error = ""
        while not stop.is_set():
            pull = _Pull(self.js, self.durable, self.batch)
            waker = asyncio.create_task(_propagate(stop, pull.wake))
            try:
                await pull.open(self._consumer_config())
                while not stop.is_set():
                    msgs = await pull.take()
                    last_error = ""
                    if not msgs:
                        continue
                    try:
                        await self._handle_in_time(msgs, pull)
                    except Exception as exc:
                        log.warning("events: a batch failed (%s: %s)", exc.__class__.__name__, exc)
            except Exception as exc:  # server restarting, consumer lost, connection re-established
                error = f"{exc.__class__.__name__}: {exc}"
                level = logging.DEBUG if error == last_error else logging.WARNING  # say it once
                log.log(level, "events: pull failed (%s); re-subscribing", error)
                last_error = error
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), retry_s)
            finally:
                waker.cancel()
                await pull.close()

    async def _handle_in_time(self, msgs: list[Msg], pull: _Pull) -> None:
        """``handle_batch``; while it runs longer than a third of the ack wait (many devices and
        agents in one batch on a slow disk, or a gap being waited for), the batch and what was
        delivered behind it are reported in progress, so the server does not redeliver them meanwhile."""
        handling = asyncio.ensure_future(self.handle_batch(msgs))
        try:
            while not (await asyncio.wait({handling}, timeout=self.ack_wait_s / 3))[0]:
                with contextlib.suppress(Exception):  # the connection is gone: the batch fails anyway
                    for msg in (*msgs, *pull.waiting):
                        if not msg.is_acked:
                            await msg.in_progress()
        finally:
            if not handling.done():
                handling.cancel()
        handling.result()

    async def handle_batch(self, msgs: list[Msg]) -> None:
        """Apply a batch: one KV read and one CAS write per device (each concurrent), then the acks.

        Within the batch, each device's events are applied in sequence order (a redelivered event
        may arrive after newer ones). Acks go out only after the record moved, so a crash anywhere
        leaves the events unacknowledged (redelivered, then recognised as applied or applied again
        idempotently), never acknowledged but unrecorded.
        """
        decoded: list[tuple[str, int, events_pb2.EdgeEvent, Msg]] = []
        for msg in msgs:
            try:
                event = decode(msg)
            except MessageRejected as rejected:
                await self._dead_letter(msg, rejected.reason)
                continue
            decoded.append((event.device_id, event.seq, event, msg))
        if not decoded:
            return
        # redeliveries arrive after newer messages: per device, sequence order is what counts
        decoded.sort(key=_device_and_seq)
        keys = list(dict.fromkeys(key for key, _, _, _ in decoded))
        read = await asyncio.gather(*(self._last(key) for key in keys))
        devices = {key: _Device(*last) for key, last in zip(keys, read, strict=True)}
        admitted: list[tuple[events_pb2.EdgeEvent, Msg]] = []
        done: list[Msg] = []
        deferred: list[Msg] = []
        for key, seq, event, msg in decoded:
            dev = devices[key]
            if dev.blocked:
                deferred.append(msg)
            elif seq == dev.last + 1:
                dev.last = seq
                admitted.append((event, msg))
                done.append(msg)
            elif seq <= dev.last:  # applied before: a resend or a redelivery
                self.stats.duplicates += 1
                done.append(msg)
            elif await self._after_gap(key, dev, seq):
                dev.last = seq
                admitted.append((event, msg))
                done.append(msg)
            elif not dev.blocked:  # the wait showed it applied elsewhere
                done.append(msg)
            else:
                deferred.append(msg)
        if admitted:  # applied before the records move and before any ack
            await self.apply_batch([event for event, _ in admitted])
            self.stats.applied += len(admitted)
            if self.observe is not None:
                for event, msg in admitted:
                    self.observe(event, msg)
        await asyncio.gather(
            *(self._record(key, dev) for key, dev in devices.items() if dev.last > dev.recorded)
        )
        for key, dev in devices.items():
            self.last_applied[key] = max(self.last_applied.get(key, 0), dev.last)
        for msg in done:
            await msg.ack()
        for msg in deferred:
            await self._defer(msg)

    async def _apply_each(self, events: list[events_pb2.EdgeEvent]) -> None:
        for event in events:
            await self.apply(event)

    async def _after_gap(self, device: str, dev: _Device, seq: int) -> bool:
        """``seq`` is past ``dev.last + 1``. True: apply it now. False: a duplicate after all (the
        caller acks it), or deferred: ``dev`` is then blocked for the rest of the batch."""
        if dev.last == dev.recorded:
            # nothing applied for this device in this batch yet: another hub may be applying the gap
            dev.recorded, dev.revision = await self._wait_for(device, seq - 1)
            dev.last = dev.recorded
            if seq <= dev.last:
                self.stats.duplicates += 1
                return False
            if seq == dev.last + 1:
                return True
        dev.blocked = True  # keep this device's order: everything after the gap waits too
        return False

    async def _defer(self, msg: Msg) -> None:
        self.stats.deferred += 1
        await msg.nak(delay=self.gap_delay_s)

    async def _record(self, device: str, dev: _Device) -> None:
        try:
            await self.applied.replace(device, str(dev.last), dev.revision)
        except RecordConflict:
            # another hub advanced it concurrently; the applies were idempotent, so nothing is lost
            log.info("device %s: seq %d recorded by another hub", device, dev.last)

    async def _wait_for(self, device: str, seq: int) -> tuple[int, int | None]:
        deadline = asyncio.get_running_loop().time() + self.gap_wait_s
        delay = 0.002
        while True:
            last, revision = await self._last(device)
            if last >= seq or asyncio.get_running_loop().time() > deadline:
                return last, revision
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def _last(self, device: str) -> tuple[int, int | None]:
        found = await self.applied.get(device)
        return (0, None) if found is None else (int(found.value or "0"), found.revision)

    async def _dead_letter(self, msg: Msg, reason: str) -> None:
        log.warning("dead-lettering a message from %s: %s", msg.subject, reason)
        headers = dead_letter_headers(reason, msg.subject)
        await self.js.publish(subjects.deadletter("events"), msg.data[:MAX_EVENT_BYTES], headers=headers)
        self.stats.dead_lettered += 1
        await msg.ack()
