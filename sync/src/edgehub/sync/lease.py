"""Leases in JetStream KV: work that one hub process at a time should do, with fail-over.

A lease is a key in the ``edgehub-leases`` bucket holding the holder's id. ``acquire`` creates it
(only possible when absent); the holder renews it every third of the bucket's TTL with
compare-and-set; a holder that dies stops renewing and the key expires, so another process takes
over within about one TTL. A holder that fails to renew (partitioned, or someone else took over)
must stop the leased work at once: ``hold`` sets the event it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyValueError
from nats.js.kv import KeyValue

from .streams import LEASE_TTL_S, LEASES

log = logging.getLogger("edgehub.sync.lease")


class Lease:
    """One named lease, as seen by one would-be holder."""

    def __init__(self, js: JetStreamContext, name: str, holder: str, *, ttl_s: float = LEASE_TTL_S) -> None:
        self.js = js
        self.name = name
        self.holder = holder
        self.ttl_s = ttl_s
        self._kv: KeyValue | None = None
        self._revision: int | None = None

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self.js.key_value(LEASES.name)
        return self._kv

    async def acquire(self) -> bool:
        kv = await self._bucket()
        try:
            self._revision = await kv.create(self.name, self.holder.encode())
        except KeyValueError:
            return False
        log.info("%s holds the lease %s", self.holder, self.name)
        return True

    async def holder_now(self) -> str | None:
        kv = await self._bucket()
        try:
            entry = await kv.get(self.name)
        except KeyNotFoundError:
            return None
        return entry.value.decode() if entry.value else None

    async def hold(self, lost: asyncio.Event, stop: asyncio.Event) -> None:
        """Renew until ``stop``; on a failed renewal set ``lost`` and return."""
        kv = await self._bucket()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.ttl_s / 3)
            if stop.is_set():
                break
            try:
                self._revision = await kv.update(self.name, self.holder.encode(), last=self._revision)
            except Exception as exc:
                log.warning("%s lost the lease %s (%s)", self.holder, self.name, exc.__class__.__name__)
                lost.set()
                return

    async def release(self) -> None:
        kv = await self._bucket()
        with contextlib.suppress(Exception):
            await kv.delete(self.name, last=self._revision)
        self._revision = None
