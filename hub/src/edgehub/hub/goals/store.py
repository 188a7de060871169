"""Where goals are kept: the ``edgehub-goals`` bucket (a ``RecordStore`` of ``Goal`` messages, key: the
goal id) and this hub process's view of it.

Every change is a compare-and-set (``RecordStore.update``), so any hub process may advance any goal and
a restarted hub loses nothing. The view (``active``: goals not ended, as this process last wrote, read
or watched them; ``ended``: when each ended goal ended, until it is pruned; ``agents``: task agents
whose first step is awaited) is kept current by ``follow``, a watch on the bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from nats.js import JetStreamContext

from edgehub.protocol.errors import ErrorCode
from edgehub.protocol.v1 import goals_pb2
from edgehub.sync.records import (
    Change,
    ChangeKind,
    ProtoCodec,
    RecordConflict,
    RecordExists,
    RecordStore,
    RecordUnreadable,
    Stored,
)
from edgehub.sync.streams import GOALS

from ..errors import GoalError
from .legacy import legacy_goal
from .record import ACTIVE, GOAL_ENDED, SCHEMA_VERSION
from .schedule import Effects

G = goals_pb2

log = logging.getLogger("edgehub.hub.goals.store")

CODEC = ProtoCodec(G.Goal, SCHEMA_VERSION, legacy=legacy_goal)
"""The goal record's one serialisation (version 1, JSON, read through ``legacy_goal``)."""
WATCH_WAIT_S = 0.5

Transition = Callable[[G.Goal], Effects]
"""A transition of a goal: changes the record in place, returns what to carry out once it is stored."""
Then = Callable[[G.Goal, Effects], Awaitable[None]]
"""What follows a stored change: its effects carried out."""


class GoalStore:
    """The goals bucket and this process's view of it (see the module docstring)."""

    def __init__(self, js: JetStreamContext) -> None:
        self.records: RecordStore[G.Goal] = RecordStore(js, GOALS.name, CODEC)
        self.active: dict[str, G.Goal] = {}
        """Goals not ended, by id."""
        self.ended: dict[str, float] = {}
        """Ended goals -> when they ended, until their records are pruned (``[planner] keep_ended_days``)."""
        self.agents: dict[str, tuple[str, str]] = {}
        """Task agent id -> (goal, task) until its first step event is seen (when the agent began)."""
        self._revisions: dict[str, int] = {}
        self._ids: dict[str, str] = {}
        """KV key -> goal id (a delete names only the key)."""
        self._locks: dict[str, asyncio.Lock] = {}

    # reads -----------------------------------------------------------------------------------------
    async def get(self, goal_id: str) -> Stored[G.Goal] | None:
        """The goal and its revision; None when there is none. ``GoalError`` when it cannot be read."""
        try:
            return await self.records.get(goal_id)
        except RecordUnreadable as exc:
            raise GoalError(ErrorCode.FAILED_PRECONDITION, f"goal {goal_id}: {exc.message}") from None

    async def read(self, goal_id: str) -> G.Goal:
        """The goal; ``GoalError`` (NOT_FOUND) when there is none."""
        found = await self.get(goal_id)
        if found is None:
            raise GoalError(ErrorCode.NOT_FOUND, f"no goal {goal_id!r}")
        return found.value

    async def all(self) -> list[G.Goal]:
        """Every readable goal record, oldest first."""
        return sorted((s.value for s in await self.records.list()), key=lambda r: r.submitted_at)

    def others(self, goal_id: str) -> list[G.Goal]:
        """The active goals but ``goal_id`` (what they sent counts against the devices' free slots)."""
        return [r for gid, r in self.active.items() if gid != goal_id]

    # writes ----------------------------------------------------------------------------------------
    async def create(self, record: G.Goal) -> bool:
        """Store a new goal; False when one of its id exists (a sub-goal started again after a crash)."""
        record.updated_at = time.time()
        try:
            stored = await self.records.create(record.goal_id, record)
        except RecordExists:
            return False
        self.remember(record, stored.revision)
        return True

    async def update(
        self, goal_id: str, change: Transition, then: Then | None = None
    ) -> tuple[G.Goal, Effects]:
        """Read, ``change``, compare-and-set (again on a conflict, a bounded number of times), then
        ``then`` (carry out the effects), one update at a time per goal in this process. Returns the
        stored record and the effects of the change that was stored. A change that leaves the record as
        it was writes nothing and has nothing carried out (a quiet tick)."""
        effects = Effects()

        def step(found: Stored[G.Goal] | None) -> G.Goal | None:
            nonlocal effects
            if found is None:
                raise GoalError(ErrorCode.NOT_FOUND, f"no goal {goal_id!r}")
            record = G.Goal()
            record.CopyFrom(found.value)
            effects = change(record)
            if record == found.value:
                effects = Effects()
                return None
            record.updated_at = time.time()
            return record

        async with self._locks.setdefault(goal_id, asyncio.Lock()):
            try:
                stored = await self.records.update(goal_id, step)
            except RecordConflict as exc:
                raise GoalError(ErrorCode.ABORTED, f"goal {goal_id}: {exc.message}") from None
            except RecordUnreadable as exc:
                raise GoalError(ErrorCode.FAILED_PRECONDITION, f"goal {goal_id}: {exc.message}") from None
            assert stored is not None  # step refuses an absent record
            self.remember(stored.value, stored.revision)
            if then is not None:
                await then(stored.value, effects)
        return stored.value, effects

    async def prune(self, now: float, keep_days: float) -> int:
        """Delete the records of goals that ended more than ``keep_days`` ago; how many."""
        horizon = now - keep_days * 86400
        old = [gid for gid, ended in self.ended.items() if ended < horizon]
        for gid in old:
            await self.records.purge(gid)
            self.ended.pop(gid, None)
        if old:
            log.info("%d ended goals older than %g days pruned", len(old), keep_days)
        return len(old)

    # the view --------------------------------------------------------------------------------------
    def remember(self, record: G.Goal, revision: int) -> None:
        """This process's view of a goal, from its own write or read or from the watch (which can
        deliver a write after a newer one this process made: the newer revision stays)."""
        gid = record.goal_id
        if revision < self._revisions.get(gid, 0):
            return
        self._revisions[gid] = revision
        self._ids[self.records.key(gid)] = gid
        if record.status in GOAL_ENDED:
            self.active.pop(gid, None)
            self._locks.pop(gid, None)
            self.ended[gid] = record.finished_at or record.updated_at or time.time()
        else:
            self.active[gid] = record
        for tid, state in record.tasks.items():
            if not state.agent_id:
                continue
            if state.status in ACTIVE and not state.timed:
                self.agents[state.agent_id] = (gid, tid)
            else:
                self.agents.pop(state.agent_id, None)

    def forget(self, key: str) -> None:
        """The goal stored under ``key`` was deleted."""
        gid = self._ids.pop(key, key)
        self.active.pop(gid, None)
        self.ended.pop(gid, None)
        self._revisions.pop(gid, None)

    async def follow(self, stop: asyncio.Event) -> None:
        """Keep the view current with every hub process's writes (a watch on the bucket: its records at
        the start, then each write once), watching again after any error, until ``stop``."""
        while not stop.is_set():
            try:
                async with self.records.watch() as watch:
                    while not stop.is_set():
                        if (change := await watch.next(WATCH_WAIT_S)) is not None:
                            self._seen(change)
            except Exception as exc:  # NATS restarting: watch again
                log.warning("goal watch failed (%s: %s); watching again", type(exc).__name__, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)

    def _seen(self, change: Change[G.Goal]) -> None:
        if change.kind == ChangeKind.DELETE:
            self.forget(change.key)
        elif change.kind == ChangeKind.UNREADABLE:  # not a goal this hub can read
            log.debug("goal record %s unreadable: %s", change.key, change.error)
        elif change.kind == ChangeKind.PUT and change.value is not None:
            if self.records.key(change.value.goal_id) != change.key:  # the key names the goal
                log.warning("goal record %s names another goal; ignored", change.key)
                return
            self.remember(change.value, change.revision)
