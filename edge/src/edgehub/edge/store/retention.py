"""Retention: which of the store's old rows may go, and the daemon's task that prunes them.

Five kinds of data grow with every step, a sixth with every trigger event (``KINDS``). For each, the store
offers the rows that nothing needs any more, oldest first (``SqliteStore.prune_candidates``: never an
outbox row the hub has not acknowledged, nor the newest acknowledged one; never a live agent's state,
turns, mind-log or intents; never an unresolved approval; never a mind-log row L3 has not indexed yet),
and ``choose`` keeps of those what the kind's ``Rule`` allows. ``Pruner`` deletes the rest in small
transactions, so a step waits for at most one batch, then hands freed pages back to the file system
(incremental vacuum).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..config import KindRetention, RetentionConfig
from .base import Candidate, RetainedStore, Totals

log = logging.getLogger("edgehub.edge.store")

KINDS = ("outbox", "mind_log", "agents", "intents", "episodes", "triggers")
"""The kinds of data retention bounds (``[retention.<kind>]``), in the order a pass prunes them: what
the hub has (outbox), then what ended agents left (mind-log and turns, then the agents themselves),
then tool intents and L3 episodes, and the record of trigger events (which nothing else needs)."""


@dataclass(frozen=True, slots=True)
class Rule:
    """How much of one kind the store keeps; None: no limit of that sort."""

    max_age_s: float | None = None
    """A row older than this goes."""
    max_rows: int | None = None
    """Beyond this many rows of the kind (counting those that must stay), the oldest go."""
    max_bytes: int | None = None
    """Beyond this many bytes of the kind (counting those that must stay), the oldest go."""


def rules_of(cfg: RetentionConfig) -> dict[str, Rule]:
    """Each kind's rule as the pruner applies it from ``[retention]``; none when retention is off."""
    if not cfg.enabled:
        return {}
    rules = {}
    for kind in KINDS:
        own: KindRetention = getattr(cfg, kind)
        age = own.max_age_days * 86400 if own.max_age_days is not None else None
        rules[kind] = Rule(age, own.max_rows, cfg.max_bytes(kind))
    return rules


def choose(candidates: Sequence[Candidate], rule: Rule, totals: Totals, now: float) -> list[Candidate]:
    """The ``candidates`` (oldest first) that ``rule`` lets go, given what the kind holds in all."""
    cutoff = now - rule.max_age_s if rule.max_age_s is not None else float("-inf")
    extra_rows = totals.rows - rule.max_rows if rule.max_rows is not None else 0
    extra_bytes = totals.bytes - rule.max_bytes if rule.max_bytes is not None else 0
    chosen = []
    for c in candidates:
        if not (c.at < cutoff or extra_rows > 0 or extra_bytes > 0):
            break  # oldest first: the rest are newer, and the kind is within its limits
        chosen.append(c)
        extra_rows -= 1
        extra_bytes -= c.bytes
    return chosen


@dataclass(slots=True)
class PruneReport:
    """What one pass deleted."""

    rows: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    pages_freed: int = 0
    """Pages handed back to the file system by the incremental vacuum."""

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


class Pruner:
    """Prunes the store by ``rules`` every ``interval_s`` until stopped (the daemon's helper task).

    ``indexed_through``: the last mind-log id L3 has indexed (None: L3 is off), so pruning never takes
    a step before L3 has made its episode."""

    def __init__(
        self,
        store: RetainedStore,
        rules: dict[str, Rule],
        *,
        interval_s: float = 60.0,
        batch_rows: int = 500,
        vacuum_pages: int = 1024,
        indexed_through: Callable[[], int | None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.rules = rules
        self.interval_s = interval_s
        self.batch_rows = batch_rows
        self.vacuum_pages = vacuum_pages
        self.indexed_through = indexed_through
        self.clock = clock
        self.passes = 0
        self.pruned: dict[str, int] = dict.fromkeys(KINDS, 0)
        """Rows deleted since the daemon started, per kind."""
        self.slowest_batch_s = 0.0
        """The longest one batch held the event loop (its query and its delete transaction)."""

    async def run(self, stop: asyncio.Event) -> None:
        """A pass every ``interval_s`` (the first one at once) until ``stop``; a failing pass is logged
        and the next one retries (a busy or full disk must not stop the daemon)."""
        while not stop.is_set():
            try:
                report = await self.prune_once(stop)
            except Exception as exc:
                log.warning("retention pass failed: %s: %s", exc.__class__.__name__, exc)
            else:
                if report.total_rows:
                    log.info("retention: pruned %s, %d pages freed", report.rows, report.pages_freed)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)

    async def prune_once(self, stop: asyncio.Event | None = None) -> PruneReport:
        """One pass over every kind with a rule, in batches of ``batch_rows`` (yielding to the agents
        between batches), then the incremental vacuum."""
        report = PruneReport()
        for kind in KINDS:
            if (rule := self.rules.get(kind)) is not None:
                await self._prune_kind(kind, rule, report, stop)
        if report.total_rows and self.vacuum_pages:
            report.pages_freed = await self._vacuum(stop)
        self.passes += 1
        return report

    async def _prune_kind(
        self, kind: str, rule: Rule, report: PruneReport, stop: asyncio.Event | None
    ) -> None:
        totals = self.store.retention_totals(kind)
        rows = size = 0
        while stop is None or not stop.is_set():
            started, indexed = time.perf_counter(), self.indexed_through()
            found = self.store.prune_candidates(kind, self.batch_rows, indexed)
            chosen = choose(found, rule, totals, self.clock())
            went = self.store.prune_rows(kind, [c.key for c in chosen], indexed) if chosen else 0
            self.slowest_batch_s = max(self.slowest_batch_s, time.perf_counter() - started)
            if not went:  # nothing left to prune, or what was chosen became needed meanwhile
                break
            gone = sum(c.bytes for c in chosen)
            rows, size = rows + went, size + gone
            totals = Totals(totals.rows - went, totals.bytes - gone, totals.oldest)
            await asyncio.sleep(0)  # let the agents' steps commit between batches
        if rows:
            report.rows[kind], report.bytes[kind] = rows, size
            self.pruned[kind] += rows

    async def _vacuum(self, stop: asyncio.Event | None) -> int:
        """Hand free pages back, ``vacuum_pages`` per transaction, until none is left."""
        freed = 0
        while stop is None or not stop.is_set():
            done = self.store.incremental_vacuum(self.vacuum_pages)
            freed += done
            if done < self.vacuum_pages:
                break
            await asyncio.sleep(0)
        return freed
