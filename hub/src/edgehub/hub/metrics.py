"""The hub daemon's own metrics: how far behind the edges it is (``EventLag``), its event counters
(``ApplierCollector``, read at scrape time) and each device's state and backlog
(``DeviceStateCollector``).

Labels stay bounded: the hub id, and the device id only on the per-device gauges, where the
device is the point (one series per device of the fleet, none per agent or goal).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from edgehub.protocol import subjects
from edgehub.protocol.v1 import events_pb2
from edgehub.sync import EventApplier
from edgehub.sync.streams import HUB_EVENTS_CONSUMER

from .fleet.devices import DeviceWatcher, is_online
from .routing import EventRouter

log = logging.getLogger("edgehub.hub.metrics")


class EventLag:
    """How far behind the edges the hub is: per applied event, seconds since its step happened on the
    device and since the stream stored it; and events the shared consumer has not yet applied."""

    BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)

    def __init__(self, registry: CollectorRegistry) -> None:
        self.from_device = Histogram(
            "edgehub_hub_event_lag_seconds",
            "From the step on the device to its event applied at the hub (includes offline time)",
            buckets=self.BUCKETS,
            registry=registry,
        )
        self.from_stream = Histogram(
            "edgehub_hub_event_queue_seconds",
            "From the stream storing an event to the hub applying it",
            buckets=self.BUCKETS,
            registry=registry,
        )
        self.pending = Gauge(
            "edgehub_hub_events_pending",
            "Events in the stream the hub consumer has not acknowledged (undelivered + in flight)",
            registry=registry,
        )

    def observe(self, event: events_pb2.EdgeEvent, msg: Msg) -> None:
        now = time.time()
        if event.step.HasField("at"):
            self.from_device.observe(max(0.0, now - event.step.at.ToMilliseconds() / 1000))
        with contextlib.suppress(Exception):  # a message without JetStream metadata
            self.from_stream.observe(max(0.0, now - msg.metadata.timestamp.timestamp()))

    async def run(self, js: JetStreamContext, stop: asyncio.Event, every_s: float = 2.0) -> None:
        while not stop.is_set():
            try:
                info = await js.consumer_info(subjects.EVENTS_STREAM, HUB_EVENTS_CONSUMER)
                self.pending.set(info.num_pending + info.num_ack_pending)
            except Exception as exc:  # not created yet, or NATS restarting: the next poll retries
                log.debug("consumer lag unavailable: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)


class ApplierCollector(Collector):
    """Event application counters, read from the applier and the router at scrape time (None: the
    hub has not opened yet)."""

    def __init__(self, hub_id: str, parts: Callable[[], tuple[EventApplier, EventRouter] | None]) -> None:
        self.hub_id = hub_id
        self.parts = parts

    def collect(self) -> Iterator[CounterMetricFamily]:
        parts = self.parts()
        if parts is None:
            return
        applier, router = parts
        for name, value, text in (
            ("edgehub_hub_events_applied", applier.stats.applied, "Events applied to the registry"),
            (
                "edgehub_hub_events_duplicate",
                applier.stats.duplicates,
                "Resent or redelivered events skipped",
            ),
            ("edgehub_hub_events_deferred", applier.stats.deferred, "Events deferred behind a sequence gap"),
            (
                "edgehub_hub_events_dead_lettered",
                applier.stats.dead_lettered,
                "Messages sent to dead letters",
            ),
            (
                "edgehub_hub_events_fenced",
                router.fenced,
                "Events refused because their device does not own the agent at their epoch",
            ),
        ):
            family = CounterMetricFamily(name, text, labels=["hub"])
            family.add_metric([self.hub_id], value)
            yield family


class DeviceStateCollector(Collector):
    """Per device (revoked ones left out), at scrape time, from the hub's live view of the twins:
    online as the fleet API says it (``edgehub_hub_device_online``, 1 or 0), its outbox depth as its
    last twin said (``edgehub_hub_device_outbox_depth``), and its lag: its outbox head (twin) minus the
    sequence the hub applied last for it (``edgehub_hub_device_lag_events``), events it made that the
    hub has not applied yet, wherever they wait. The lag is reported only by the hub process applying
    events (``applied``: device -> sequence, read from the ``edgehub-applied`` bucket when it starts
    consuming and kept as it applies; None until the applier exists)."""

    def __init__(
        self, watcher: Callable[[], DeviceWatcher | None], applied: Callable[[], dict[str, int] | None]
    ) -> None:
        self.watcher = watcher
        self.applied = applied

    def collect(self) -> Iterator[GaugeMetricFamily]:
        watcher = self.watcher()
        if watcher is None or not watcher.synced:
            return
        online = GaugeMetricFamily(
            "edgehub_hub_device_online",
            "1: the device's heartbeats arrive; 0: they stopped",
            labels=["device"],
        )
        depth = GaugeMetricFamily(
            "edgehub_hub_device_outbox_depth",
            "Events waiting in the device's outbox, as its last twin reported",
            labels=["device"],
        )
        lag = GaugeMetricFamily(
            "edgehub_hub_device_lag_events",
            "Events the device made (its twin's outbox head) that this hub has not applied",
            labels=["device"],
        )
        applied = dict(self.applied() or {})  # one copy: the loop writes while the metrics thread reads
        now = time.time()
        for device, _, twin in watcher.twins():
            online.add_metric([device], float(is_online(twin, now)))
            depth.add_metric([device], twin.outbox_depth)
            if device in applied:
                lag.add_metric([device], max(0, twin.outbox_head - applied[device]))
        yield from (online, depth, lag)
