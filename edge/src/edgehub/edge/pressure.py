"""Disk pressure: what the daemon does when the file system holding its store fills up.

A write that does not fit raises ``StoreFull`` and is rolled back whole (``store/sqlite/connection``),
so the store holds the agent's last checkpoint and nothing by halves. The scheduler then pauses the
agent instead of failing it (it stays RUNNING in the store, as after a drain) and starts no agent
while the pressure lasts. ``DiskPressure.run`` checks every ``check_s`` whether there is space again
(``resume_free_mb`` free on the store's file system); once there is, the scheduler resumes the paused
agents from their last checkpoint, each first writing a warning into its mind-log that says how long
it was paused and why (the hub sees it in the agent's trace). Meanwhile the twin's ``paused_reason``
tells the hub (the heartbeat writes to the hub's KV, not to the disk).

Before the disk is full: with ``pause_free_bytes`` set, the same check runs while there is no pressure,
and once less than that is free the daemon pauses its running agents at their next step boundary
(``low``), before a write fails; they resume the same way once ``resume_free_bytes`` is free.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import StoreFull

log = logging.getLogger("edgehub.edge.pressure")


@dataclass
class Paused:
    """One agent paused by a full disk."""

    agent_id: str
    since: float
    """Unix seconds."""
    reason: str


@dataclass
class DiskPressure:
    """Whether the store's file system is full, and which agents wait for space."""

    folder: Path
    """The store's folder (its file system is the one watched)."""
    resume_free_bytes: int = 2 * 1024 * 1024
    pause_free_bytes: int = 0
    """Pause the running agents at their next step once less than this is free (0: only when a write
    fails). Below ``resume_free_bytes``, so a pause and its resume do not alternate."""
    check_s: float = 1.0
    reason: str = ""
    """Why agents are paused ('' : they are not)."""
    paused: dict[str, Paused] = field(default_factory=dict)
    """Agents paused, until resumed (``take_resumed``)."""

    @property
    def full(self) -> bool:
        return bool(self.reason)

    def low(self) -> bool:
        """Less than ``pause_free_bytes`` free (and not yet under pressure): enter it before a write
        fails. The scheduler then pauses its running agents at their step boundary (``pause``)."""
        if self.reason or self.pause_free_bytes <= 0:
            return False
        free = self._measured()
        if free is None or free >= self.pause_free_bytes:
            return False
        self.reason = (
            f"the store's file system is nearly full ({free / 2**20:.1f} MB free, "
            f"under [store] pause_free_mb = {self.pause_free_bytes / 2**20:g})"
        )
        log.warning("%s: pausing agents until %g MB are free", self.reason, self.resume_mb)
        return True

    def pause(self, agent_id: str) -> None:
        """``agent_id`` stops at its step boundary because of the pressure; resumed with the others."""
        self.paused.setdefault(agent_id, Paused(agent_id, time.time(), self.reason))

    def hit(self, agent_id: str, exc: StoreFull) -> None:
        """``agent_id``'s write did not fit: pause it (and start nothing until there is space)."""
        if not self.reason:
            log.warning("store full: pausing agents until %d MB are free (%s)", self.resume_mb, exc.message)
        self.reason = f"the store's file system is full ({exc.detail})"
        self.paused.setdefault(agent_id, Paused(agent_id, time.time(), self.reason))

    @property
    def resume_mb(self) -> float:
        return self.resume_free_bytes / (1024 * 1024)

    def free_bytes(self) -> int:
        return int(shutil.disk_usage(self.folder).free)

    def _measured(self) -> int | None:
        """``free_bytes``, or None when the folder cannot be measured (logged at debug)."""
        try:
            return self.free_bytes()
        except OSError as exc:
            log.debug("free space of %s: %s", self.folder, exc)
            return None

    def check(self) -> bool:
        """Is there space again? Clears the pressure when there is."""
        if not self.reason:
            return True
        free = self._measured()
        if free is None or free < self.resume_free_bytes:
            return False
        log.info("store has space again (%d MB free): resuming %d agent(s)", free >> 20, len(self.paused))
        self.reason = ""
        return True

    def take_resumed(self) -> list[Paused]:
        """The paused agents, once there is space again (empty while there is not)."""
        if self.reason or not self.paused:
            return []
        resumed, self.paused = list(self.paused.values()), {}
        return resumed

    async def run(self, stop: asyncio.Event) -> None:
        """Check for space every ``check_s`` while under pressure, until ``stop``."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.check_s)
            if not self.low():
                self.check()
