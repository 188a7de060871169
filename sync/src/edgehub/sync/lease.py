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

from .records import RecordExists, RecordStore, TextCodec
from .streams import LEASE_TTL_S, LEASES

log = logging.getLogger("edgehub.sync.lease")


class Lease:
    """One named lease, as seen by one would-be holder."""

    def __init__(self, js: JetStreamContext, name: str, holder: str, *, ttl_s: float = LEASE_TTL_S) -> None:
        self.js = js
        self.name = name
        self.holder = holder
        self.ttl_s = ttl_s
        self.store = RecordStore(js, LEASES.name, TextCodec(), keyed=False)  # lease names are keys
        self._revision: int | None = None

    async def acquire(self) -> bool:
        try:
            self._revision = (await self.store.create(self.name, self.holder)).revision
        except RecordExists:
            return False
        log.info("%s holds the lease %s", self.holder, self.name)
        return True

    @property
    def held(self) -> bool:
        """This holder acquired the lease and has not released it (it may have lost it since)."""
        return self._revision is not None

    async def holder_now(self) -> str | None:
        found = await self.store.get(self.name)
        return (found.value or None) if found is not None else None

    async def hold(self, lost: asyncio.Event, stop: asyncio.Event) -> None:
        """Renew until ``stop``; on a failed renewal set ``lost`` and return."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.ttl_s / 3)
            if stop.is_set():
                break
            try:
                self._revision = (await self.store.replace(self.name, self.holder, self._revision)).revision
            except Exception as exc:  # RecordConflict (taken over), or NATS unreachable
                log.warning("%s lost the lease %s (%s)", self.holder, self.name, exc.__class__.__name__)
                lost.set()
                return

    async def release(self) -> None:
        with contextlib.suppress(Exception):  # taken over meanwhile (RecordConflict), or NATS gone
            await self.store.delete(self.name, revision=self._revision)
        self._revision = None
