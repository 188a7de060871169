"""What a trigger's source hands its events to (``runner.TriggerSink``), the shape of a source, and the
backoff sources reconnect with."""

from __future__ import annotations

import asyncio
from typing import Protocol

from .gate import Outcome


class Sink(Protocol):
    """One trigger's way in: each event its source receives, or why one could not be read."""

    async def event(
        self, payload: object, fields: dict[str, object], *, checked: bool = False
    ) -> tuple[Outcome, str]:
        """Take an event: ``payload`` (what the condition tests, ``${payload.x}``) and the source's
        ``fields`` (``topic``, ``subject``, ...); ``checked``: the source has applied the condition
        itself (Modbus fires on crossing it). (outcome, the agent started or '')."""
        ...

    def bad_payload(self, why: str) -> None:
        """An event that could not be read (not JSON, too big): counted and ignored."""
        ...


class Source(Protocol):
    """Receives one trigger's events until cancelled, reconnecting on its own after failures."""

    async def run(self) -> None: ...


class Backoff:
    """Waits between reconnects: 0.5 s doubling to ``cap`` s; ``reset`` once connected."""

    def __init__(self, cap: float = 30.0) -> None:
        self.cap = cap
        self.delay = 0.5

    async def wait(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self.cap)

    def reset(self) -> None:
        self.delay = 0.5
