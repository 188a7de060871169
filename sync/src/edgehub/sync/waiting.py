"""Waiting on something unless the component is told to stop: the one way every daemon loop here
races work against its stop event (connects that may retry forever, wake-ups, watched processes)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from .errors import Stopped

T = TypeVar("T")


async def until_stopped(aw: Awaitable[T], stop: asyncio.Event) -> T:
    """``aw``'s result, or ``Stopped`` once ``stop`` is set first (``aw`` is then cancelled and
    awaited, so nothing it started outlives the call). ``aw``'s own exception propagates."""
    task = asyncio.ensure_future(aw)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((task, stopper), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        stopped = not task.done()
        if stopped:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    if stopped:
        raise Stopped()
    return task.result()


async def any_set(*events: asyncio.Event) -> None:
    """Until one of ``events`` is set (a loop's stop, or its wake-up: whichever comes first)."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
