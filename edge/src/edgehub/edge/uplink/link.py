"""The edge's link to the hub: replicate the outbox over NATS JetStream while the daemon runs, and
apply the hub's commands to this device (acknowledged once their effect is committed).

Connects with unlimited reconnects (the edge works offline; the outbox keeps growing on disk and
drains in order when the hub side is back), publishes through ``edgehub.sync.OutboxPublisher``, and
raises an alarm when more than ``[hub] outbox_alarm`` events wait. Nothing is ever dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import nats
from nats.aio.client import Client

from edgehub.protocol.ids import kv_key
from edgehub.sync import OutboxPublisher, Stopped, until_stopped
from edgehub.sync.commands import CommandConsumer, Handler
from edgehub.sync.streams import DEVICES

from ..config import HubLinkConfig
from ..store.sqlite import SqliteStore
from .identity import DeviceIdentity

log = logging.getLogger("edgehub.edge.uplink.link")


def daemon_version() -> str:
    try:
        return version("edgehub-edge")
    except PackageNotFoundError:
        return "unknown"


async def _quiet(exc: Exception) -> None:
    log.debug("hub link: %s", exc)


class HubLink:
    """Runs the outbox publisher; ``run(stop)`` returns after a final drain attempt."""

    def __init__(
        self,
        cfg: HubLinkConfig,
        store: SqliteStore,
        device_id: str,
        *,
        on_command: Handler | None = None,
        report: Callable[[], dict[str, Any]] | None = None,
        identity: DeviceIdentity | None = None,
    ) -> None:
        urls = [cfg.nats_url] if cfg.nats_url else list(identity.nats_urls if identity else ())
        assert urls, "HubLink needs [hub] nats_url or an enrolled identity"
        self.urls = urls
        self.identity = identity
        self.cfg = cfg
        self.store = store
        self.device_id = device_id
        self.publisher: OutboxPublisher | None = None
        self.on_command = on_command
        self.report = report
        """The device's reported state for its twin (merged into each heartbeat)."""
        self.commands: CommandConsumer | None = None
        self.nc: Client | None = None
        """The connection while ``run`` holds one (request/reply for the knowledge tool)."""
        self._alarmed = False

    async def _connect(self, stop: asyncio.Event) -> Client | None:
        delay = 0.5
        auth: dict[str, Any] = {}
        if self.identity is not None:
            auth = {"user_credentials": str(self.identity.creds), "inbox_prefix": self.identity.inbox_prefix}
        else:
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
                    **auth,
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

    def twin(self, state: str) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "state": state,
            "heartbeat_s": self.cfg.heartbeat_s,
            "sent_at": time.time(),
            "version": daemon_version(),
            "hardware": {"arch": platform.machine(), "cpus": os.cpu_count(), "kernel": platform.release()},
            "load": os.getloadavg()[0],
            "outbox_depth": self.store.outbox_depth(),
            **(self.report() if self.report else {}),
        }

    async def _heartbeat(self, nc: Client, stop: asyncio.Event) -> None:
        """Report the twin every ``heartbeat_s`` (and a last "stopped" one on shutdown)."""
        kv = None
        while True:
            state = "stopped" if stop.is_set() else "running"
            try:
                kv = kv or await nc.jetstream().key_value(DEVICES.name)
                await kv.put(kv_key(self.device_id), json.dumps(self.twin(state)).encode())
            except Exception as exc:  # no hub topology yet, or disconnected: the next beat retries
                log.debug("heartbeat not sent: %s", exc)
            if stop.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.cfg.heartbeat_s)

    async def _flush(self) -> None:
        assert self.publisher is not None
        while await self.publisher.drain_once():
            pass

    async def run(self, stop: asyncio.Event) -> None:
        nc = await self._connect(stop)
        if nc is None:
            return
        self.nc = nc
        self.publisher = OutboxPublisher(self.store, nc.jetstream(), batch=self.cfg.publish_batch)
        helpers = [asyncio.create_task(self._heartbeat(nc, stop), name="heartbeat")]
        if self.on_command is not None:
            self.commands = CommandConsumer(nc.jetstream(), self.device_id, self.on_command)
            helpers.append(asyncio.create_task(self.commands.run(stop), name="commands"))
        try:
            await self.publisher.run(stop)
            await asyncio.gather(*helpers)
            with contextlib.suppress(Exception):  # send what the drain checkpointed, for a few seconds
                await asyncio.wait_for(self._flush(), 10.0)
        finally:
            self.nc = None
            with contextlib.suppress(Exception):
                await nc.close()
