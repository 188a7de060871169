"""Memory given back when the daemon goes idle: once no agent has run for ``settle_s``, drop what an
agent loaded on demand (the L3 embedding model), collect Python's garbage and hand the C heap's free
pages back to the kernel (glibc's ``malloc_trim``; CPython and llama.cpp free into malloc, which keeps
the pages otherwise). Without it the daemon stayed ~300 MiB above its idle size after an agent ended.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("edgehub.edge.trim")


def _glibc(name: str) -> Any:
    """A glibc function, or None where libc is not glibc (musl has no ``malloc_trim``)."""
    libc = ctypes.util.find_library("c")
    if libc is None:
        return None
    try:
        return getattr(ctypes.CDLL(libc), name)
    except (OSError, AttributeError):
        return None


def malloc_trim() -> bool:
    """``malloc_trim(0)``: give free heap pages back to the kernel; False where libc is not glibc."""
    trim = _glibc("malloc_trim")
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    return bool(trim(0))


class IdleTrim:
    """Trims once after each busy period: when ``running()`` has been 0 for ``settle_s`` (the indexer
    embeds an agent's last steps just after it ends)."""

    def __init__(
        self,
        running: Callable[[], int],
        release: Sequence[Callable[[], object]] = (),
        *,
        settle_s: float = 5.0,
        poll_s: float = 0.5,
    ) -> None:
        self.running = running
        self.release = list(release)
        self.settle_s = settle_s
        self.poll_s = poll_s
        self.trims = 0
        """How many times it trimmed (tests and logs)."""
        self._busy = False
        self._idle_since: float | None = None

    def tick(self, now: float) -> bool:
        """Note the state at ``now``; whether it is time to trim."""
        if self.running() > 0:
            self._busy, self._idle_since = True, None
            return False
        if not self._busy:
            return False
        if self._idle_since is None:
            self._idle_since = now
        if now - self._idle_since < self.settle_s:
            return False
        self._busy, self._idle_since = False, None
        return True

    def trim(self) -> None:
        """Release, collect, trim (blocking: run it in a thread)."""
        for release in self.release:
            release()
        gc.collect()
        malloc_trim()
        self.trims += 1

    async def run(self, stop: asyncio.Event) -> None:
        """Trim after each busy period until ``stop``."""
        while not stop.is_set():
            if self.tick(time.monotonic()):
                await asyncio.to_thread(self.trim)
                log.debug("idle: memory trimmed")
            try:
                await asyncio.wait_for(stop.wait(), self.poll_s)
            except TimeoutError:
                continue
