"""The edge's link to the hub: replicate the outbox over NATS JetStream while the daemon runs, report
the device twin every ``[hub] heartbeat_s`` (``twin.py`` builds it) and apply the hub's commands to
this device (``commands.py``; acknowledged once their effect is committed).

Connects with unlimited reconnects (the edge works offline; the outbox keeps growing on disk and
drains in order when the hub side is back), publishes through ``edgehub.sync.OutboxPublisher``, and
raises an alarm when more than ``[hub] outbox_alarm`` events wait. Nothing is ever dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import nats
from nats.aio.client import DEFAULT_INBOX_PREFIX, Client

from edgehub.protocol.v1 import twin_pb2
from edgehub.sync import OutboxPublisher, Stopped, until_stopped
from edgehub.sync.commands import CommandConsumer, Handler
from edgehub.sync.errors import SyncError
from edgehub.sync.publisher import Entry
from edgehub.sync.records import RecordStore
from edgehub.sync.streams import DEVICES
from edgehub.sync.tls import nats_tls

from ..config import HubLinkConfig
from ..errors import ConfigError
from .identity import DeviceIdentity
from .twin import TWINS

log = logging.getLogger("edgehub.edge.uplink.link")


Twin = Callable[[twin_pb2.DeviceState.ValueType], twin_pb2.DeviceTwin]
"""The device's twin in a given state (``TwinReporter.twin``)."""


class LinkStore(Protocol):
    """What the link needs of the store: the outbox."""

    def outbox_pending(self, limit: int = 1000) -> Sequence[Entry]: ...

    def outbox_ack(self, upto_seq: int) -> None: ...

    def outbox_depth(self) -> int: ...


def hub_endpoints(cfg: HubLinkConfig, identity: DeviceIdentity | None) -> tuple[list[str], dict[str, Any]]:
    """The hub's NATS URLs (configured, else from enrollment; empty: none) and the TLS arguments of
    ``nats.connect`` for them (``edgehub.sync.tls.nats_tls``: TLS first against the CA enrollment
    gave; plaintext only to loopback unless ``[hub] allow_plaintext``). ConfigError when refused."""
    urls = [cfg.nats_url] if cfg.nats_url else list(identity.nats_urls if identity else ())
    ca = cfg.ca_file or (identity.nats_ca if identity else None)
    try:
        return urls, nats_tls(urls, ca, allow_plaintext=cfg.allow_plaintext) if urls else {}
    except (SyncError, OSError, ssl.SSLError) as exc:
        raise ConfigError(str(exc), key="hub.nats_url") from None


async def _quiet(exc: Exception) -> None:
    log.debug("hub link: %s", exc)


class HubLink:
    """Runs the outbox publisher, the twin's heartbeat and the command consumer over one NATS
    connection; ``run`` returns after a final drain attempt."""

    def __init__(
        self,
        cfg: HubLinkConfig,
        store: LinkStore,
        device_id: str,
        *,
        identity: DeviceIdentity | None = None,
    ) -> None:
        urls, self.tls = hub_endpoints(cfg, identity)
        if not urls:
            raise ConfigError("no NATS URL for the hub: set it, or enroll the device", key="hub.nats_url")
        self.urls = urls
        self.identity = identity
        self.cfg = cfg
        self.store = store
        self.device_id = device_id
        self.publisher: OutboxPublisher | None = None
        """The outbox's publisher while ``run`` holds a connection."""
        self.nc: Client | None = None
        """The connection while ``run`` holds one (request/reply for the knowledge tool)."""
        self._alarmed = False

    @property
    def published(self) -> int | None:
        """Events published over the current connection (None: not connected yet)."""
        return self.publisher.stats.published if self.publisher is not None else None

    async def _connect(self, stop: asyncio.Event) -> Client | None:
        delay = 0.5
        creds, inbox = (
            (str(self.identity.creds), self.identity.inbox_prefix) if self.identity else (None, None)
        )
        if self.identity is None:
            log.warning("device %s is not enrolled (edgehub edge enroll): connecting without credentials",
                        self.device_id)  # fmt: skip
        while not stop.is_set():
            try:  # nats-py retries a first connect forever itself: a stop must end that too
                connecting = nats.connect(
                    self.urls,
                    name=f"edgehub-edge-{self.device_id}",
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1.0,
                    error_cb=_quiet,
                    user_credentials=creds,
                    inbox_prefix=inbox or DEFAULT_INBOX_PREFIX,
                    **self.tls,
                )
                return await until_stopped(connecting, stop)
            except Stopped:
                return None
            except Exception as exc:
                log.warning("hub at %s unreachable (%s); working offline", ", ".join(self.urls), exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, 30.0)
        return None

    def check_alarm(self) -> None:
        """Log an alarm when the outbox holds more than ``[hub] outbox_alarm`` events (once, until it
        is back under the limit)."""
        depth = self.store.outbox_depth()
        if depth > self.cfg.outbox_alarm and not self._alarmed:
            log.error(
                "ALARM: %d events wait for the hub (limit %d); they are kept on disk until delivered",
                depth,
                self.cfg.outbox_alarm,
            )
            self._alarmed = True
        elif depth <= self.cfg.outbox_alarm and self._alarmed:
            log.warning("outbox back under the alarm limit (%d events waiting)", depth)
            self._alarmed = False

    async def _heartbeat(self, nc: Client, twin: Twin, stop: asyncio.Event) -> None:
        """Report the twin every ``heartbeat_s`` (and a last "stopped" one on shutdown)."""
        devices = RecordStore(nc.jetstream(), DEVICES.name, TWINS)
        while True:
            state = twin_pb2.DEVICE_STATE_STOPPED if stop.is_set() else twin_pb2.DEVICE_STATE_RUNNING
            try:
                await devices.put(self.device_id, twin(state))
            except Exception as exc:  # no hub topology yet, or disconnected: the next beat retries
                log.debug("heartbeat not sent: %s", exc)
            if stop.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.cfg.heartbeat_s)

    @staticmethod
    async def _flush(publisher: OutboxPublisher) -> None:
        while await publisher.drain_once():
            pass

    async def run(
        self,
        stop: asyncio.Event,
        *,
        commands: Handler | None = None,
        twin: Twin | None = None,
        publish: bool = True,
    ) -> None:
        """Until ``stop``: publish the outbox (unless not ``publish``: a restricted daemon, whose outbox
        went back in time, sends nothing from it), heartbeat ``twin`` and apply the hub's commands with
        ``commands`` (each only when given)."""
        nc = await self._connect(stop)
        if nc is None:
            return
        self.nc = nc
        self.publisher = publisher = OutboxPublisher(self.store, nc.jetstream(), batch=self.cfg.publish_batch)
        helpers = []
        if twin is not None:
            helpers.append(asyncio.create_task(self._heartbeat(nc, twin, stop), name="heartbeat"))
        if commands is not None:
            consumer = CommandConsumer(nc.jetstream(), self.device_id, commands)
            helpers.append(asyncio.create_task(consumer.run(stop), name="commands"))
        try:
            if publish:
                await publisher.run(stop)
            await asyncio.gather(*helpers)
            if publish:  # send what the drain checkpointed, for a few seconds
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._flush(publisher), 10.0)
        finally:
            self.nc = None
            with contextlib.suppress(Exception):
                await nc.close()
