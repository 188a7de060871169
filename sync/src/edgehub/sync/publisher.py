"""Edge -> hub: drain the outbox to JetStream, in order, with bounded in-flight async publishes.

Each round reads up to ``batch`` unacknowledged outbox entries (oldest first), publishes them all
without waiting (JetStream acks come back as futures; at most ``batch`` are in flight), then waits for
the acks in order and acknowledges in the outbox the longest prefix the server confirmed. Anything
after a failure is sent again next round: the stable ``Nats-Msg-Id`` (``<device>/<seq>``) lets the
server drop a resend inside its window, and the hub applies each sequence number once anyway (see
``applier``), so resends are harmless and nothing is lost. Offline, the outbox simply grows on disk.

An event too large for the stream is never dropped silently and never blocks the ones behind it: it
is replaced, under the same sequence number, by a placeholder saying so (the original stays in the
device's mind-log).

A server that refuses to store (the events stream at its byte limit: "maximum bytes exceeded"; the
server's JetStream store full: "insufficient resources") answers each publish with an error: the
events stay in the outbox and are sent again with the same back-off as when the hub is unreachable.
The refusal is logged once (``last_error``), not once per round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import Error as JetStreamError

from edgehub.protocol import subjects
from edgehub.protocol.v1 import agent_pb2, events_pb2

from . import tracing
from .streams import MAX_EVENT_BYTES
from .waiting import any_set

log = logging.getLogger("edgehub.sync.publisher")
_STOPPED = "publishing stopped at seq %d (kept in the outbox, retried): %s"


class Entry(Protocol):
    @property
    def seq(self) -> int: ...

    @property
    def event(self) -> events_pb2.EdgeEvent: ...

    @property
    def traceparent(self) -> str:
        """W3C trace context of the span that wrote the event ('' untraced): sent as its header."""
        ...


class Outbox(Protocol):
    """What the publisher needs from the edge's store."""

    def outbox_pending(self, limit: int = 1000) -> Sequence[Entry]: ...

    def outbox_ack(self, upto_seq: int) -> None: ...


@dataclass
class PublisherStats:
    published: int = 0
    acked_rounds: int = 0
    failures: int = 0
    placeholders: int = 0


def msg_id(device_id: str, seq: int) -> str:
    return f"{device_id}/{seq}"


def placeholder(event: events_pb2.EdgeEvent, size: int) -> bytes:
    stub = events_pb2.EdgeEvent()
    stub.CopyFrom(event)
    stub.ClearField("step")
    stub.step.CopyFrom(
        agent_pb2.StepEvent(
            schema_version=event.step.schema_version,
            event_id=event.step.event_id,
            agent_id=event.step.agent_id,
            device_id=event.step.device_id,
            epoch=event.step.epoch,
            step=event.step.step,
            kind=event.step.kind,
            status=event.step.status,
            detail=f"event of {size} bytes exceeds the {MAX_EVENT_BYTES}-byte limit; kept on the device",
        )
    )
    return stub.SerializeToString()


class OutboxPublisher:
    """Drains one device's outbox into the events stream."""

    def __init__(
        self,
        outbox: Outbox,
        js: JetStreamContext,
        *,
        batch: int = 256,
        ack_timeout_s: float = 5.0,
        idle_poll_s: float = 0.05,
        max_bytes: int = MAX_EVENT_BYTES,
    ) -> None:
        self.outbox = outbox
        self.js = js
        self.batch = batch
        self.ack_timeout_s = ack_timeout_s
        self.idle_poll_s = idle_poll_s
        self.max_bytes = max_bytes
        self.stats = PublisherStats()
        self._failed = False
        self.last_error = ""
        """Why the last publish failed, as the server or the client said it ('' after a success)."""
        self.wake = asyncio.Event()
        """Set by the producer after a commit to publish at once instead of at the next poll."""

    async def drain_once(self) -> int:
        """Publish one batch; return how many entries the server confirmed (and the outbox acked)."""
        self._failed = False
        entries = self.outbox.outbox_pending(self.batch)
        if not entries:
            return 0
        pending: list[tuple[Entry, asyncio.Future[object]]] = []
        try:
            for entry in entries:
                pending.append((entry, await self._publish(entry)))
        except (nats.errors.Error, JetStreamError, OSError) as exc:
            self._refused(entry.seq, exc)
        confirmed = await self._confirmed(pending)
        if not self._failed:
            self.last_error = ""
        if confirmed:
            try:
                self.outbox.outbox_ack(confirmed)
            except Exception as exc:  # the device's disk is full: sent again later, applied once
                self._refused(confirmed, exc, "acknowledging in the outbox failed at seq %d: %s")
                return 0
            self.stats.acked_rounds += 1
        first = entries[0].seq
        return confirmed - first + 1 if confirmed else 0

    def _message(self, entry: Entry) -> tuple[str, bytes, dict[str, str]]:
        """Subject, payload and headers of ``entry``'s message."""
        event = entry.event
        data = event.SerializeToString()
        if len(data) > self.max_bytes:
            log.error("event %s is %d bytes; publishing a placeholder", event.event_id, len(data))
            data = placeholder(event, len(data))
            self.stats.placeholders += 1
        headers = {"Nats-Msg-Id": msg_id(event.device_id, entry.seq)}
        if entry.traceparent:  # kept in the outbox: it survives an offline spell and a restart
            tracing.inject(headers, tracing.linked(entry.traceparent))
        return subjects.events(event.device_id, event.agent_id), data, headers

    async def _publish(self, entry: Entry) -> asyncio.Future[object]:
        subject, data, headers = self._message(entry)
        future = await self.js.publish_async(
            subject, data, headers=headers, stream=subjects.EVENTS_STREAM, wait_stall=self.ack_timeout_s
        )
        self.stats.published += 1
        return future  # type: ignore[return-value]

    async def _ask(self, entry: Entry) -> Exception | None:
        """Publish ``entry`` once more, waiting for the server's answer: None when it is stored now,
        else why not. nats-py (2.x) leaves an async publish's future unresolved when the server answers
        503 ("maximum bytes exceeded", "insufficient resources": its reply handler raises instead of
        failing the future), so a timeout alone cannot tell a full stream from a slow one. The
        ``Nats-Msg-Id`` is the same, so a message stored meanwhile is not stored twice."""
        subject, data, headers = self._message(entry)
        try:
            await self.js.publish(
                subject, data, headers=headers, stream=subjects.EVENTS_STREAM, timeout=self.ack_timeout_s
            )
        except Exception as exc:  # the server's refusal, or a timeout again
            return exc
        return None

    def _refused(self, seq: int, exc: BaseException, say: str = _STOPPED) -> None:
        """A publish from ``seq`` on failed: resent next round; said once per distinct reason."""
        error = str(exc).strip() or exc.__class__.__name__
        if error != self.last_error:
            log.warning(say, seq, error)
        self.last_error = error
        self.stats.failures += 1
        self._failed = True

    async def _confirmed(self, pending: list[tuple[Entry, asyncio.Future[object]]]) -> int:
        """The highest seq such that it and every seq before it in this round were acknowledged."""
        confirmed = 0
        for i, (entry, future) in enumerate(pending):
            try:
                await asyncio.wait_for(asyncio.shield(future), self.ack_timeout_s)
                future.result()
            except Exception as exc:  # a nack, a timeout or a lost connection: resend from here next round
                for _, rest in pending[i:]:
                    rest.cancel()
                why = await self._ask(entry) if isinstance(exc, TimeoutError) else exc
                if why is None:  # stored now: the next round goes on after it
                    return entry.seq
                self._refused(entry.seq, why)
                break
            confirmed = entry.seq
        return confirmed

    async def run(self, stop: asyncio.Event) -> None:
        """Drain until ``stop`` is set; back off while the hub side is unreachable."""
        backoff = self.idle_poll_s
        while not stop.is_set():
            try:
                sent = await self.drain_once()
            except Exception:
                log.exception("outbox drain failed")
                sent = 0
            if sent and not self._failed:
                backoff = self.idle_poll_s
                continue
            backoff = min(backoff * 2, 2.0) if self._failed else self.idle_poll_s
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(any_set(stop, self.wake), backoff)
