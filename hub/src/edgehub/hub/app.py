"""The hub daemon: wires NATS, the hub's services (``HubServices``), the event applier (routing each
event with ``EventRouter``), the management API (gRPC, TLS) and Prometheus metrics, and runs them.

Lifecycle as everywhere: ``async with HubDaemon(cfg) as hub: await hub.run()``; ``request_stop()``
(SIGTERM) ends the run, ``shutdown()`` is idempotent. With no ``[nats] url`` the daemon starts an
embedded nats-server (JetStream, ``sync_interval: always``) on 127.0.0.1 and stops it on shutdown.
Several hub processes may run against one NATS: they share the event consumer through a lease.

The NATS connection is supervised: while it is down (nats-py reconnecting) the API's health service
says NOT_SERVING, and SERVING again once it is back. When it closes for good (the server closed it
with an error nats-py does not reconnect after, such as ``maximum control line exceeded``, or the
embedded nats-server died) the run ends with ``NatsLost``: ``edgehub hub run`` exits non-zero and
the supervisor (systemd ``Restart=on-failure``) starts a fresh hub, rather than one that answers but
applies nothing. Re-building every service on a new connection in-process would duplicate what a
restart already does, with state (watches, leases, consumers) that a restart resets cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from types import TracebackType
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
import nats
from nats.aio.client import Client, RawCredentials
from prometheus_client import CollectorRegistry, start_http_server

from edgehub.sync import EventApplier, NatsServer, Stopped, ensure_topology, until_stopped
from edgehub.sync.auth import Trust
from edgehub.sync.lease import Lease
from edgehub.sync.tls import CertificateAuthority

from .api.service import ApiHealth, serve
from .config import HubConfig
from .errors import NatsLost
from .knowledge import KnowledgeService
from .metrics import ApplierCollector, EventLag
from .operators import bootstrap_admin
from .routing import EventRouter
from .services import HubServices

log = logging.getLogger("edgehub.hub")


async def _quiet(exc: Exception) -> None:
    log.debug("nats: %s", exc)


class HubDaemon:
    def __init__(self, cfg: HubConfig) -> None:
        self.cfg = cfg
        self.server: NatsServer | None = None
        self.nc: Client | None = None
        self.services: HubServices | None = None
        self.router: EventRouter | None = None
        self.applier: EventApplier | None = None
        self.knowledge: KnowledgeService | None = None
        """The L4 graph (``[neo4j]``; the embedded Neo4j when no uri is set), starting with the daemon."""
        self._stop = asyncio.Event()
        self._closed = False
        self.registry_metrics = CollectorRegistry()
        self.registry_metrics.register(ApplierCollector(cfg.hub.id, self._counted))
        self.lag = EventLag(self.registry_metrics)
        self._metrics_server: WSGIServer | None = None
        self.metrics_port: int | None = None
        self.api: grpc.aio.Server | None = None
        self.api_port: int | None = None
        self.device_api_port: int | None = None
        self.health = ApiHealth()
        """The API's health: follows the NATS connection."""
        self._nats_lost = asyncio.Event()

    def _counted(self) -> tuple[EventApplier, EventRouter] | None:
        return (self.applier, self.router) if self.applier and self.router else None

    @property
    def url(self) -> str:
        if self.cfg.nats.url:
            return self.cfg.nats.url
        assert self.server is not None
        return self.server.url

    @property
    def api_address(self) -> str:
        return f"{self.cfg.api.addr.rsplit(':', 1)[0]}:{self.api_port}"

    async def __aenter__(self) -> HubDaemon:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.shutdown()

    # open ------------------------------------------------------------------------------------------
    async def open(self) -> None:
        """NATS, the topology and the services; then (the graph ready) the API, so a hub whose API
        answers is a hub that is fully up."""
        starting = None
        if self.cfg.neo4j.enabled:  # the JVM starts while NATS and the API come up
            self.knowledge = KnowledgeService(self.cfg.neo4j)
            starting = asyncio.create_task(self.knowledge.start(), name="neo4j")
        try:
            trust = Trust.load_or_create(self.cfg.auth.dir)
            ca = CertificateAuthority.load_or_create(self.cfg.auth.dir)
            await self._start_nats(trust)
            services = await self._open_services(trust, ca)
            await self._load_revocations(services, trust)
            await self._open_knowledge(services, starting)
            await self._start_api(services, ca)
            self._start_metrics()
        except BaseException:
            if starting is not None:
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
            raise

    async def _start_nats(self, trust: Trust) -> None:
        """The embedded nats-server (when no ``[nats] url``), then the hub's connection."""
        n = self.cfg.nats
        if not n.url:
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
            disconnected_cb=self._nats_down,
            reconnected_cb=self._nats_up,
            closed_cb=self._nats_closed,
        )

    async def _nats_down(self) -> None:
        if not self._closed:
            log.warning("lost the NATS connection; reconnecting (health: NOT_SERVING)")
            await self.health.set(False)

    async def _nats_up(self) -> None:
        log.info("NATS connection back (health: SERVING)")
        await self.health.set(True)

    async def _nats_closed(self) -> None:
        """The client gave up for good (not our own shutdown): end the run (see the module docstring)."""
        if self._closed:
            return
        log.error("the NATS connection closed for good (%s); stopping", self.nc.last_error if self.nc else "")
        await self.health.set(False)
        self._nats_lost.set()

    async def _open_services(self, trust: Trust, ca: CertificateAuthority) -> HubServices:
        """The topology, the services, and the applier that routes events into them."""
        assert self.nc is not None
        js = self.nc.jetstream()
        await ensure_topology(js)
        urls = self.cfg.nats.advertise or [self.url]
        self.services = services = HubServices.build(js, self.cfg, trust, ca, urls, self.registry_metrics)
        self.router = EventRouter(services)
        self.applier = EventApplier(
            js,
            services.agents.apply,
            lease=Lease(js, "events", self.cfg.hub.id),
            observe=self.lag.observe,
            apply_batch=self.router.apply_batch,
            batch=self.cfg.hub.events_batch,
        )
        return services

    async def _load_revocations(self, services: HubServices, trust: Trust) -> None:
        """The embedded server refuses revoked devices from the start, and reloads on a revocation."""
        if self.server is None:
            return
        server = self.server

        async def apply(revocations: dict[str, int]) -> bool:
            await server.reload(trust.server_config(revocations))
            return True

        services.identity.apply_revocations = apply
        if revoked := await services.identity.credentials.revocations():
            await apply(revoked)
            log.info("%d revoked device credentials loaded into nats-server", len(revoked))

    async def _open_knowledge(self, services: HubServices, starting: asyncio.Task[object] | None) -> None:
        if starting is None or self.knowledge is None:
            return
        await starting
        log.info("knowledge graph (L4, Neo4j) at %s", self.knowledge.uri)
        assert self.nc is not None
        await services.add_knowledge(self.knowledge, self.nc, self.cfg, self.registry_metrics)

    async def _start_api(self, services: HubServices, ca: CertificateAuthority) -> None:
        admin = await bootstrap_admin(services.tokens, self.cfg.auth.dir)
        api = self.cfg.api
        self.api, self.api_port, self.device_api_port = await serve(
            services, api.addr, api.device_addr, ca.server_pair(api.tls_names), self.health
        )
        if self.nc is not None and not self.nc.is_connected:  # went down while the API came up
            await self.health.set(False)
        log.info(
            "management API (gRPC, TLS) on %s, for devices (mutual TLS) on %s; CA %s, admin token in %s",
            self.api_address,
            services.identity.device_api,
            ca.folder / "ca.pem",
            admin,
        )

    def _start_metrics(self) -> None:
        m = self.cfg.metrics
        if m.port is None:
            return
        self._metrics_server, _ = start_http_server(m.port, addr=m.addr, registry=self.registry_metrics)
        self.metrics_port = int(self._metrics_server.server_port)
        log.info("metrics on http://%s:%d/metrics", m.addr, self.metrics_port)

    # run -------------------------------------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        assert self.applier is not None, "open() first"
        assert self.services is not None
        assert self.nc is not None
        log.info("hub %s running on %s", self.cfg.hub.id, self.url)
        parts = [
            self.applier.run(self._stop),
            self.lag.run(self.nc.jetstream(), self._stop),
            self._watch_knowledge(),
            self._watch_nats(),
            *self.services.runs(self._stop),
        ]
        tasks = [asyncio.create_task(c) for c in parts]
        try:
            for done in (await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION))[0]:
                done.result()
        finally:
            self._stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch_knowledge(self) -> None:
        """Until stopped; raises (ending the run) if the embedded Neo4j dies."""
        if self.knowledge is None:
            return
        with contextlib.suppress(Stopped):
            await until_stopped(self.knowledge.run(), self._stop)

    async def _watch_nats(self) -> None:
        """Until stopped; raises ``NatsLost`` (ending the run) when the connection closed for good or
        the embedded nats-server exited."""
        waits: list[Coroutine[Any, Any, object]] = [self._nats_lost.wait(), self._stop.wait()]
        if self.server is not None and self.server.process is not None:
            waits.append(self.server.process.wait())
        tasks = [asyncio.ensure_future(w) for w in waits]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
        if self._stop.is_set() and not self._nats_lost.is_set():
            return
        await self.health.set(False)
        raise NatsLost("the hub's NATS connection closed for good; exiting for a restart")

    async def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self.api is not None:
            await self.api.stop(grace=2.0)
        if self.services is not None:
            await self.services.close()
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
