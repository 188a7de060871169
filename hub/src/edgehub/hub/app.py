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
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry, start_http_server

from edgehub.protocol.v1 import events_pb2
from edgehub.sync import EventApplier, NatsServer, Stopped, ensure_topology, until_stopped
from edgehub.sync.auth import Trust
from edgehub.sync.errors import SyncError
from edgehub.sync.lease import Lease
from edgehub.sync.tls import CertificateAuthority, ServerTls, nats_tls

from .api.service import ApiHealth, serve
from .config import HubConfig
from .errors import HubError, NatsLost
from .knowledge import KnowledgeService
from .metrics import ApplierCollector, DeviceStateCollector, EventLag
from .operators import bootstrap_admin
from .retention import Retention
from .routing import EventRouter
from .services import HubServices
from .tracing import HubTracing

log = logging.getLogger("edgehub.hub")


def _mb(mb: int | None) -> int | None:
    return None if mb is None else mb * 1024 * 1024


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
        self.retention: Retention | None = None
        """Purges applied events and prunes ended migrations (``[retention]``, one hub process at a time)."""
        """The L4 graph (``[neo4j]``; the embedded Neo4j when no uri is set), starting with the daemon."""
        self._stop = asyncio.Event()
        self._closed = False
        self.registry_metrics = CollectorRegistry()
        self.registry_metrics.register(ApplierCollector(cfg.hub.id, self._counted))
        self.lag = EventLag(self.registry_metrics)
        self.registry_metrics.register(
            DeviceStateCollector(
                lambda: self.services.watcher if self.services else None,
                lambda: self.applier.last_applied if self.applier else None,
            )
        )
        self.tracing = HubTracing.from_config(cfg.tracing, cfg.hub.id)
        """Goals, their tasks, the API's calls and applied events, as spans (``[tracing]``; off: no-op)."""
        self._metrics_server: WSGIServer | None = None
        self.metrics_port: int | None = None
        self.api: grpc.aio.Server | None = None
        self.api_port: int | None = None
        self.device_api_port: int | None = None
        self.health = ApiHealth()
        """The API's health: follows the NATS connection."""
        self._nats_lost = asyncio.Event()
        self._ca: CertificateAuthority | None = None

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
            await self._start_nats(trust, ca)
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

    async def _start_nats(self, trust: Trust, ca: CertificateAuthority) -> None:
        """The embedded nats-server (when no ``[nats] url``), then the hub's connection."""
        n = self.cfg.nats
        self._ca = ca
        if not n.url:
            pair = self._new_server_certificate() if n.client_tls or n.leaf_tls else None
            self.server = await NatsServer.start(
                n.embedded_store,
                port=n.embedded_port,
                auth=trust.server_config(),
                host=n.embedded_host,
                leaf=(n.leaf_host or n.embedded_host, n.leaf_port) if n.leaf_port else None,
                leaf_js_accounts=(trust.account_id,),
                tls=pair if n.client_tls else None,
                leaf_tls=pair if n.leaf_tls else None,
                max_store=_mb(self.cfg.retention.jetstream_max_store_mb),
            )
            log.info("embedded nats-server on %s (store %s)", self.server.url, n.embedded_store)
            if self.server.leaf:
                scheme = "TLS" if n.leaf_tls else "plaintext"
                log.info("leaf nodes connect to nats-leaf://%s:%d (%s)", *self.server.leaf, scheme)
        self.nc = await nats.connect(
            self.url,
            **nats_tls([self.url], self.nats_ca, allow_plaintext=n.allow_plaintext, setting="nats.url"),
            name=f"edgehub-hub-{self.cfg.hub.id}",
            user_credentials=RawCredentials(trust.hub_creds(self.cfg.hub.id)),
            max_reconnect_attempts=-1,
            error_cb=_quiet,
            disconnected_cb=self._nats_down,
            reconnected_cb=self._nats_up,
            closed_cb=self._nats_closed,
        )

    @property
    def nats_ca(self) -> bytes:
        """The CA (bundle) of the NATS servers' certificates: ``[nats] ca_file``, or the hub's."""
        if self.cfg.nats.ca_file is not None:
            return self.cfg.nats.ca_file.read_bytes()
        assert self._ca is not None, "open() first"
        return self._ca.pem

    def _new_server_certificate(self) -> ServerTls:
        n = self.cfg.nats
        assert self._ca is not None, "open() first"
        pair = self._ca.write_server_pair(n.embedded_store / "tls", n.server_names(), n.tls_cert_days)
        log.info(
            "NATS server certificate for %s, valid %.0f days", ", ".join(n.server_names()), n.tls_cert_days
        )
        return pair

    async def renew_nats_certificate(self) -> int:
        """Issue the embedded server a new certificate and load it without a restart (connected
        clients stay connected; new ones see the new certificate). Returns its serial number."""
        if self.server is None or not (self.server.tls or self.server.leaf_tls):
            raise HubError("the hub runs no embedded nats-server with TLS: no certificate to renew")
        pair = self._new_server_certificate()
        await self.server.reload_tls()
        return pair.serial()

    async def _renew_certificates(self) -> None:
        """Until stopped: renew the embedded server's certificate when a third of its life is left."""
        pair = (self.server.tls or self.server.leaf_tls) if self.server is not None else None
        if pair is None:
            await self._stop.wait()
            return
        check_s = min(3600.0, pair.lifetime().total_seconds() / 20)
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), check_s)
            if not self._stop.is_set() and pair.due():
                try:
                    await self.renew_nats_certificate()
                except SyncError as exc:  # the next check tries again; the old one is still valid
                    log.error("NATS server certificate not renewed: %s", exc)

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
        await ensure_topology(js, self.cfg.retention.stream_limits())
        urls = self.cfg.nats.advertise or [self.url]
        self.services = services = HubServices.build(
            js, self.cfg, trust, ca, urls, self.registry_metrics, nats_ca=self.nats_ca, tracing=self.tracing
        )
        services.add_escalation(self.nc, self.cfg, self.registry_metrics)
        self.router = EventRouter(services)
        self.applier = EventApplier(
            js,
            services.agents.apply,
            lease=Lease(js, "events", self.cfg.hub.id),
            observe=self._observe,
            apply_batch=self.router.apply_batch,
            batch=self.cfg.hub.events_batch,
        )
        self.retention = Retention(
            js, self.cfg.retention, services.migrations, holder=self.cfg.hub.id, metrics=self.registry_metrics
        )
        return services

    def _observe(self, event: events_pb2.EdgeEvent, msg: Msg) -> None:
        """An event was applied: its lag, and its span when it carries a trace context."""
        self.lag.observe(event, msg)
        self.tracing.applied(event, msg)

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
            services, api.addr, api.device_addr, ca.server_pair(api.tls_names), self.health,
            interceptors=self.tracing.server_interceptors(),
        )  # fmt: skip
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
            self._renew_certificates(),
            *self.services.runs(self._stop),
        ]
        if self.retention is not None:
            parts.append(self.retention.run(self._stop))
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
        await asyncio.to_thread(self.tracing.shutdown)  # may wait for a slow collector
