"""Polling instead of sleeping: wait for a condition with a deadline and a useful failure."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def assert_eventually(
    probe: Callable[[], T], *, timeout: float = 120, interval: float = 0.2, what: str = ""
) -> T:
    """Call ``probe`` until it returns a truthy value (returned) or ``timeout`` passes (AssertionError)."""
    deadline = time.monotonic() + timeout
    last: T = probe()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {what or probe}: last saw {last!r}"
            )
        time.sleep(interval)
        last = probe()
    return last


async def eventually(
    probe: Callable[[], T],
    *,
    within: float = 120,
    interval: float = 0.05,
    what: str | Callable[[], str] = "",
) -> T:
    """``assert_eventually`` for code running on the event loop (yields to it between probes)."""
    deadline = time.monotonic() + within
    last: T = probe()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {within:g} s waiting for {what() if callable(what) else what or probe}: "
                f"last saw {last!r}"
            )
        await asyncio.sleep(interval)
        last = probe()
    return last
