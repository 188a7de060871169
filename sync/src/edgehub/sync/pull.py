"""The fetch loop every JetStream pull consumer of ours runs (hub events, edge commands)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg
from nats.js import JetStreamContext

Subscribe = Callable[[], Awaitable[JetStreamContext.PullSubscription]]
HandleBatch = Callable[[list[Msg]], Awaitable[None]]


async def pull_forever(
    subscribe: Subscribe,
    handle: HandleBatch,
    stop: asyncio.Event,
    *,
    batch: int,
    log: logging.Logger,
    what: str,
    retry_s: float = 0.2,
) -> None:
    """Fetch and handle batches until ``stop``.

    Survives a server restart, a lost consumer or a missing stream by re-subscribing after
    ``retry_s``; a batch whose handler raises is left to the server's redelivery (ack wait).
    """
    sub: JetStreamContext.PullSubscription | None = None
    last_error = ""
    while not stop.is_set():
        try:
            if sub is None:
                sub = await subscribe()
            msgs = await sub.fetch(batch, timeout=0.5)
        except TimeoutError:  # nats.errors.TimeoutError, and the asyncio one a fetch deadline raises
            continue
        except Exception as exc:  # server restarting, consumer lost, connection re-established
            error = f"{exc.__class__.__name__}: {exc}"
            level = logging.DEBUG if error == last_error else logging.WARNING  # say it once, not every retry
            log.log(level, "%s: fetch failed (%s); re-subscribing", what, error)
            last_error = error
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            sub = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), retry_s)
            continue
        last_error = ""
        try:
            await handle(msgs)
        except Exception as exc:  # left unacknowledged: redelivered after the ack wait
            log.warning("%s: a batch failed (%s: %s)", what, exc.__class__.__name__, exc)
