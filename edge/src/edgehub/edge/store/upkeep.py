"""What the daemon does for its store while it runs: copy the write-ahead log into the database on a
timer, so committed steps do not stay for long only in ``edge.db-wal`` (a file whose loss or truncation
would take them along) and the log stays short."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from .base import EdgeStore

log = logging.getLogger("edgehub.edge.store")


async def wal_checkpoints(store: EdgeStore, interval_s: float, stop: asyncio.Event) -> None:
    """A passive WAL checkpoint every ``interval_s`` until ``stop`` (SQLite also checkpoints on its own
    at 1 MB of log; this covers a device that commits little). A failure is logged and retried."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
        try:
            frames, copied = store.wal_checkpoint()
        except Exception as exc:  # a busy or failing disk must not stop the daemon: the next round retries
            log.warning("WAL checkpoint failed: %s: %s", exc.__class__.__name__, exc)
            continue
        log.debug("WAL checkpoint: %d of %d frames copied", copied, frames)
