"""The hub's retention task: purge applied events past ``[retention] events_days``, prune ended
migrations past ``migrations_days`` (with their handover state), and warn before a stream fills.

One hub process does it at a time (the ``retention`` lease, as the event applier's). What may be
purged from the events stream is bounded twice: by age (the first event younger than the retention)
and by the hub's durable consumer's ack floor (every event at or below it was applied: acks go out
only after the applied record moved, ``edgehub.sync.applier``). The purge stops at the lower of the
two, so an event the hub has not applied (a hub down for longer than the retention, a device's
events deferred behind a gap) is never purged, however old. The stream itself has no age limit and
refuses publishes at its byte limit (``edgehub.sync.streams``): nothing else deletes events.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from prometheus_client import CollectorRegistry, Gauge

from edgehub.protocol import subjects
from edgehub.protocol.v1 import hub_pb2
from edgehub.sync.lease import Lease
from edgehub.sync.records import RecordConflict
from edgehub.sync.streams import HANDOVERS, HUB_EVENTS_CONSUMER
from edgehub.sync.waiting import any_set

from .config import RetentionConfig
from .fleet.migration import MigrationService

log = logging.getLogger("edgehub.hub.retention")
H = hub_pb2
ENDED = frozenset({H.MIGRATION_PHASE_DONE, H.MIGRATION_PHASE_FAILED, H.MIGRATION_PHASE_ROLLED_BACK})
"""Migration phases nothing follows: prunable once old enough."""
FILLED = (subjects.EVENTS_STREAM, subjects.COMMANDS_STREAM)
"""Streams that refuse publishes at their byte limit: their fill is watched."""


@dataclass(frozen=True, slots=True)
class RetentionRound:
    """What one round did."""

    events_purged_below: int
    """Events below this stream sequence are gone (0: none purged this round)."""
    unapplied_kept: int
    """Events older than the retention kept because the hub has not applied them yet."""
    migrations_pruned: int


class Retention:
    """The retention task (see the module docstring)."""

    def __init__(
        self,
        js: JetStreamContext,
        cfg: RetentionConfig,
        migrations: MigrationService,
        *,
        holder: str,
        metrics: CollectorRegistry | None = None,
    ) -> None:
        self.js = js
        self.cfg = cfg
        self.migrations = migrations
        self.lease = Lease(js, "retention", holder)
        self.fill = Gauge(
            "edgehub_hub_stream_fill_ratio",
            "bytes a stream holds / its max bytes (at 1 it refuses publishes)",
            ["stream"],
            registry=metrics,
        )

    async def round(self, now: float | None = None) -> RetentionRound:
        """One round now (``now``: unix seconds, for tests)."""
        now = time.time() if now is None else now
        purged, kept = await self.purge_events(now - self.cfg.events_days * 86400)
        pruned = await self.prune_migrations(now - self.cfg.migrations_days * 86400)
        await self.check_fill()
        return RetentionRound(purged, kept, pruned)

    async def purge_events(self, horizon: float) -> tuple[int, int]:
        """Purge applied events that reached the hub before ``horizon``; (the sequence purged below or
        0, how many older events were kept unapplied)."""
        stream = subjects.EVENTS_STREAM
        state = (await self.js.stream_info(stream)).state
        if state.messages == 0:
            return 0, 0
        young = await self._first_since(horizon, state.last_seq)
        try:
            info = await self.js.consumer_info(stream, HUB_EVENTS_CONSUMER)
            applied = info.ack_floor.stream_seq if info.ack_floor is not None else 0
        except NotFoundError:  # no hub has consumed yet: nothing is applied
            applied = 0
        below = min(young, applied + 1)
        kept = max(0, young - max(below, state.first_seq))
        if kept:
            log.warning(
                "%d events older than %g days are kept: the hub has not applied them yet (applied up to "
                "stream seq %d)", kept, self.cfg.events_days, applied,
            )  # fmt: skip
        if below <= state.first_seq:
            return 0, kept
        await self.js.purge_stream(stream, seq=below)
        days = self.cfg.events_days
        log.info("events below stream seq %d purged (applied, older than %g days)", below, days)
        return below, kept

    async def _first_since(self, horizon: float, last_seq: int) -> int:
        """The stream sequence of the first event stored at or after ``horizon`` (``last_seq + 1``:
        none), read through a short-lived consumer that starts there."""
        start = datetime.datetime.fromtimestamp(horizon, tz=datetime.UTC)
        sub = await self.js.pull_subscribe(
            subjects.ALL_EVENTS,
            stream=subjects.EVENTS_STREAM,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_TIME,
                opt_start_time=start,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=30,
            ),
        )
        try:
            msgs = await sub.fetch(1, timeout=0.5)
            return int(msgs[0].metadata.sequence.stream)
        except TimeoutError:
            return last_seq + 1
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def prune_migrations(self, horizon: float) -> int:
        """Delete migrations that ended before ``horizon``, and their handover state; how many."""
        objects = await self.js.object_store(HANDOVERS)
        pruned = 0
        for found in await self.migrations.store.list():
            m = found.value
            if m.phase not in ENDED or m.updated_at >= horizon:
                continue
            try:  # only if unchanged: the key is the agent's, whose next migration may be starting
                await self.migrations.store.delete(m.agent_id, revision=found.revision)
            except RecordConflict:
                continue
            with contextlib.suppress(NotFoundError):  # deleted when it ended, or expired
                await objects.delete(m.migration_id)
            pruned += 1
        if pruned:
            log.info("%d ended migrations older than %g days pruned", pruned, self.cfg.migrations_days)
        return pruned

    async def check_fill(self) -> None:
        """Set the fill gauge of each limited stream; warn at ``alarm_ratio``."""
        for stream in FILLED:
            info = await self.js.stream_info(stream)
            limit = info.config.max_bytes or -1
            ratio = info.state.bytes / limit if limit > 0 else 0.0
            self.fill.labels(stream).set(ratio)
            if ratio >= self.cfg.alarm_ratio:
                log.warning(
                    "stream %s is %.0f%% full (%d of %d bytes): at 100%% it refuses publishes; raise "
                    "[retention] or lower the retention", stream, ratio * 100, info.state.bytes, limit,
                )  # fmt: skip

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: while holding the lease, a round every ``interval_s``."""
        while not stop.is_set():
            try:
                held = await self.lease.acquire()
            except Exception as exc:  # NATS restarting
                log.debug("retention lease: %s", exc)
                held = False
            if held:
                await self._rounds_while_held(stop)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.lease.ttl_s / 3)

    async def _rounds_while_held(self, stop: asyncio.Event) -> None:
        lost = asyncio.Event()
        keeper = asyncio.create_task(self.lease.hold(lost, stop))
        try:
            while not stop.is_set() and not lost.is_set():
                try:
                    await self.round()
                except Exception as exc:  # NATS restarting: the next round retries
                    log.warning("retention round failed: %s: %s", type(exc).__name__, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(any_set(stop, lost), self.cfg.interval_s)
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
            await self.lease.release()
