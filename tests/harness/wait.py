"""Polling instead of sleeping: wait for a condition with a deadline and a useful failure."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Literal, TypeVar

T = TypeVar("T")


def assert_eventually(
    probe: Callable[[], T | Literal[False] | None],
    *,
    timeout: float = 120,
    interval: float = 0.2,
    what: str | Callable[[], str] = "",
) -> T:
    """Call ``probe`` until it returns a truthy value (returned) or ``timeout`` passes (AssertionError).
    ``what`` names the wait; a callable is called only on a timeout, so it can report the state then
    (logs, records) rather than when the wait began."""
    deadline = time.monotonic() + timeout
    last = probe()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {_describe(what, probe)}: last saw {last!r}"
            )
        time.sleep(interval)
        last = probe()
    return last  # truthy: neither None nor False


async def eventually(
    probe: Callable[[], T | Literal[False] | None],
    *,
    within: float = 120,
    interval: float = 0.05,
    what: str | Callable[[], str] = "",
) -> T:
    """``assert_eventually`` for code running on the event loop (yields to it between probes)."""
    deadline = time.monotonic() + within
    last = probe()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {within:g} s waiting for {_describe(what, probe)}: last saw {last!r}"
            )
        await asyncio.sleep(interval)
        last = probe()
    return last  # truthy: neither None nor False


def _describe(what: str | Callable[[], str], probe: Callable[[], object]) -> str:
    return what() if callable(what) else what or str(probe)
