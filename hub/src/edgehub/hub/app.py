"""The hub daemon: applies every edge's events to the fleet registry, watches device twins, serves
the management API (gRPC, TLS) and Prometheus metrics.

Lifecycle as everywhere: ``async with HubDaemon(cfg) as hub: await hub.run()``; ``request_stop()``
(SIGTERM) ends the run, ``shutdown()`` is idempotent. With no ``[nats] url`` the daemon starts an
embedded nats-server (JetStream, ``sync_interval: always``) on 127.0.0.1 and stops it on shutdown.
Several hub processes may run against one NATS: they share the event consumer through a lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from types import TracebackType
from wsgiref.simple_server import WSGIServer

import grpc
import nats
from nats.aio.client import Client, RawCredentials
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from edgehub.protocol import subjects
from edgehub.protocol.v1 import events_pb2
from edgehub.sync import EventApplier, NatsServer, Stopped, ensure_topology, until_stopped
from edgehub.sync.auth import Trust
from edgehub.sync.lease import Lease
from edgehub.sync.streams import HUB_EVENTS_CONSUMER
from edgehub.sync.tls import CertificateAuthority

from .api.access import Credentials, Tokens, bootstrap_admin
from .api.service import Identity, serve
from .config import HubConfig
from .fleet.migration import MigrationService
from .fleet.registry import AgentRegistry, DeviceRegistry, DeviceWatcher, fence
from .goals import DeviceView, FleetCache
from .goals.service import GoalService
from .knowledge import DreamerService, KnowledgeService
from .knowledge.episodes import episode_records
from .knowledge.responder import KnowledgeResponder

log = logging.getLogger("edgehub.hub")


async def _quiet(exc: Exception) -> None:
    log.debug("nats: %s", exc)


class HubDaemon:
    def __init__(self, cfg: HubConfig) -> None:
        self.cfg = cfg
        self.server: NatsServer | None = None
        self.nc: Client | None = None
        self.registry: AgentRegistry | None = None
        self.applier: EventApplier | None = None
        self.devices: DeviceWatcher | None = None
        self.knowledge: KnowledgeService | None = None
        """The L4 graph (``[neo4j]``; the embedded Neo4j when no uri is set)."""
        self.responder: KnowledgeResponder | None = None
        """Answers the agents' knowledge tool (NATS request/reply), with the graph."""
        self.dreamer: DreamerService | None = None
        """Consolidation of L3 episodes into L4 facts (``[dreamer]``; needs the graph)."""
        self.goals: GoalService | None = None
        """Planning and dispatch of goals (``[planner]``)."""
        self.episodes_dropped = 0
        self.events_fenced = 0
        """Events refused by the single-owner fence (see ``registry.fence``), dead-lettered."""
        self._stop = asyncio.Event()
        self._closed = False
        self.registry_metrics = CollectorRegistry()
        self.registry_metrics.register(_ApplierCollector(self))
        self.lag = EventLag(self.registry_metrics)
        self._metrics_server: WSGIServer | None = None
        self.metrics_port: int | None = None
        self.api: grpc.aio.Server | None = None
        self.api_port: int | None = None
        self.device_api_port: int | None = None

    @property
    def url(self) -> str:
        if self.cfg.nats.url:
            return self.cfg.nats.url
        assert self.server is not None
        return self.server.url

    async def __aenter__(self) -> HubDaemon:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.shutdown()

    async def open(self) -> None:
        knowledge = None
        if self.cfg.neo4j.enabled:  # the JVM starts while NATS and the API come up
            self.knowledge = KnowledgeService(self.cfg.neo4j)
            knowledge = asyncio.create_task(self.knowledge.start(), name="neo4j")
        try:
            await self._open_sync_and_api(knowledge)
        except BaseException:
            if knowledge is not None:
                knowledge.cancel()
                await asyncio.gather(knowledge, return_exceptions=True)
            raise

    async def _open_sync_and_api(self, knowledge: asyncio.Task[object] | None) -> None:
        """NATS, the topology and the registries; then (the graph ready) the API, so a hub whose API
        answers is a hub that is fully up."""
        trust_dir = self.cfg.auth.dir
        trust = Trust.load_or_create(trust_dir)
        ca = CertificateAuthority.load_or_create(trust_dir)
        if not self.cfg.nats.url:
            n = self.cfg.nats
            self.server = await NatsServer.start(
                n.embedded_store,
                port=n.embedded_port,
                auth=trust.server_config(),
                host=n.embedded_host,
                leaf=(n.leaf_host or n.embedded_host, n.leaf_port) if n.leaf_port else None,
                leaf_js_accounts=(trust.account_id,),
            )
            log.info("embedded nats-server on %s (store %s)", self.server.url, n.embedded_store)
            if self.server.leaf:
                log.info("leaf nodes connect to nats-leaf://%s:%d", *self.server.leaf)
        self.nc = await nats.connect(
            self.url,
            name=f"edgehub-hub-{self.cfg.hub.id}",
            user_credentials=RawCredentials(trust.hub_creds(self.cfg.hub.id)),
            max_reconnect_attempts=-1,
            error_cb=_quiet,
        )
        js = self.nc.jetstream()
        await ensure_topology(js)
        self.registry = AgentRegistry(js)
        self.applier = EventApplier(
            js,
            self.registry.apply,
            lease=Lease(js, "events", self.cfg.hub.id),
            observe=self.lag.observe,
            apply_batch=self._apply_batch,
            batch=self.cfg.hub.events_batch,
        )
        self.devices = DeviceWatcher(js, self.registry_metrics)
        watcher, stored, cache = self.devices, DeviceRegistry(js), FleetCache()

        async def device_views() -> list[DeviceView]:
            """The live view, each device's view rebuilt only when its twin changed (placement runs
            for every result: at 1,000 devices, rebuilding every view each time stalled the hub)."""
            now = time.time()
            if watcher.synced:
                return cache.views(((d, s.revision, s.twin) for d, s in list(watcher.view.items())), now)
            return [DeviceView.from_twin(t, now) for t in await stored.all()]

        self.goals = GoalService(
            js,
            device_views,
            self.cfg.planner,
            issued_by=f"hub:{self.cfg.hub.id}",
            metrics=self.registry_metrics,
        )
        tokens = Tokens(js)
        admin = await bootstrap_admin(tokens, trust_dir)
        credentials = Credentials(js)
        identity = Identity(trust, ca, self.cfg.nats.advertise or [self.url], tokens, credentials)
        if self.server is not None:  # the embedded server refuses revoked devices from the start
            server = self.server

            async def apply(revocations: dict[str, int]) -> bool:
                await server.reload(trust.server_config(revocations))
                return True

            identity.apply_revocations = apply
            if revoked := await credentials.revocations():
                await apply(revoked)
                log.info("%d revoked device credentials loaded into nats-server", len(revoked))
        if knowledge is not None:
            await knowledge
            assert self.knowledge is not None
            log.info("knowledge graph (L4, Neo4j) at %s", self.knowledge.uri)
            graph = self.knowledge
            self.responder = KnowledgeResponder(self.nc, lambda: graph.graph, metrics=self.registry_metrics)
            if self.cfg.dreamer.enabled:
                self.dreamer = DreamerService(self.cfg.dreamer, graph.graph, js)
                await self.dreamer.start()  # checks the GGUF only; the model loads at the first run
        self.api, self.api_port, self.device_api_port = await serve(
            js,
            self.cfg.api.addr,
            self.cfg.api.device_addr,
            identity,
            ca.server_pair(self.cfg.api.tls_names),
            self.devices,
            dreamer=self.dreamer,
            goals=self.goals,
        )
        log.info(
            "management API (gRPC, TLS) on %s, for devices (mutual TLS) on %s; CA %s, admin token in %s",
            self.api_address,
            identity.device_api,
            ca.folder / "ca.pem",
            admin,
        )
        m = self.cfg.metrics
        if m.port is not None:
            self._metrics_server, _ = start_http_server(m.port, addr=m.addr, registry=self.registry_metrics)
            self.metrics_port = int(self._metrics_server.server_port)
            log.info("metrics on http://%s:%d/metrics", m.addr, self.metrics_port)

    @property
    def api_address(self) -> str:
        return f"{self.cfg.api.addr.rsplit(':', 1)[0]}:{self.api_port}"

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        assert self.applier is not None, "open() first"
        assert self.devices is not None, "open() first"
        log.info("hub %s running on %s", self.cfg.hub.id, self.url)
        assert self.nc is not None
        lag = self.lag.run(self.nc.jetstream(), self._stop)
        assert self.registry is not None
        migrations = MigrationService(self.nc.jetstream(), self.registry)
        parts = [
            self.applier.run(self._stop),
            self.devices.run(self._stop),
            lag,
            self._watch_knowledge(),
            migrations.run(self._stop),
        ]
        if self.goals is not None:
            parts.append(self.goals.run(self._stop))
        if self.responder is not None:
            parts.append(self.responder.run(self._stop))
        if self.dreamer is not None:
            parts.append(self.dreamer.run(self._stop))
        tasks = [asyncio.create_task(c) for c in parts]
        try:
            for done in (await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION))[0]:
                done.result()
        finally:
            self._stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _apply_batch(self, events: list[events_pb2.EdgeEvent]) -> None:
        """Step events to the agent registry; episodes (L3, replicated for consolidation) to the graph,
        in the same batch, so a batch is acked only when both have it. A hub without a graph
        (``[neo4j] enabled = false``) counts episodes and drops them."""
        assert self.registry is not None
        steps = [e for e in events if e.WhichOneof("body") == "step"]
        if steps:
            for event, reason in await self.registry.apply_batch(steps):
                await self._fenced(event, reason)
        if self.goals is not None:  # task results, and task agents' first steps (their start times)
            results = [e for e in events if e.WhichOneof("body") == "task_result"]
            refused = {id(e) for e, _ in await self._fence(results)}
            kept = [e for e in results if id(e) not in refused]
            mine = [e for e in events if e.WhichOneof("body") == "step"] + kept
            for event, reason in await self.goals.on_events(mine):
                await self._fenced(event, reason)
        episodes = [e for e in events if e.WhichOneof("body") == "episode"]
        if not episodes:
            return
        if self.knowledge is None:
            self.episodes_dropped += len(episodes)
            log.debug("%d episodes dropped: this hub keeps no knowledge graph", len(episodes))
            return
        await self.knowledge.graph.add_episodes(episode_records(episodes))

    async def _fence(self, results: list[events_pb2.EdgeEvent]) -> list[tuple[events_pb2.EdgeEvent, str]]:
        """Task results whose device did not own the agent at their epoch (``registry.fence``, as for
        steps: a stale copy of a migrated agent), dead-lettered; the rest may be applied."""
        assert self.registry is not None
        records = await asyncio.gather(*(self.registry.get(e.agent_id) for e in results))
        refused = [(e, why) for e, record in zip(results, records, strict=True) if (why := fence(record, e))]
        for event, reason in refused:
            await self._fenced(event, reason)
        return refused

    async def _fenced(self, event: events_pb2.EdgeEvent, reason: str) -> None:
        """An event its device may not send for the agent (a stale copy after a migration, another
        device's agent): not applied; kept in the dead letters with the reason."""
        assert self.nc is not None
        self.events_fenced += 1
        log.warning("event %s from %s refused: %s", event.event_id, event.device_id, reason)
        headers = {"Edgehub-Reason": f"fenced: {reason}"[:500], "Edgehub-Subject": event.event_id[:200]}
        await self.nc.jetstream().publish(
            subjects.deadletter("events"), event.SerializeToString(), headers=headers
        )

    async def _watch_knowledge(self) -> None:
        """Until stopped; raises (ending the run) if the embedded Neo4j dies."""
        if self.knowledge is None:
            return
        with contextlib.suppress(Stopped):
            await until_stopped(self.knowledge.run(), self._stop)

    async def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self.api is not None:
            await self.api.stop(grace=2.0)
        if self.dreamer is not None:
            await self.dreamer.shutdown()
        if self.goals is not None:
            await self.goals.close()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
        if self.server is not None:
            await self.server.stop()
        if self.knowledge is not None:
            await self.knowledge.shutdown()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()


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


class _ApplierCollector(Collector):
    """Event application counters, read from the applier at scrape time."""

    def __init__(self, hub: HubDaemon) -> None:
        self.hub = hub

    def collect(self) -> Iterator[CounterMetricFamily]:
        applier = self.hub.applier
        if applier is None:
            return
        hub_id = self.hub.cfg.hub.id
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
                self.hub.events_fenced,
                "Events refused because their device does not own the agent at their epoch",
            ),
        ):
            family = CounterMetricFamily(name, text, labels=["hub"])
            family.add_metric([hub_id], value)
            yield family
