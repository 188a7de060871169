"""Whether an event that passed its trigger's condition starts an agent: de-duplication, cooldown and
rate limit, in that order (pure logic: the clock is passed in; ``runner.py`` does the I/O).

- **dedupe**: an event whose key started an agent less than ``dedupe_s`` ago is ``deduped``. The
  window opens when an agent starts and is not stretched by the events it suppresses, so an alarm that
  keeps firing starts a new agent once per ``dedupe_s``.
- **cooldown**: less than ``cooldown_s`` after this trigger started any agent, ``cooldown``.
- **rate limit**: ``rate_limit`` agents already started in the last 60 s: ``rate_limited``.

Only a start opens windows; a suppressed event changes nothing.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from ..goaltemplate import lookup

RATE_WINDOW_S = 60.0


class Outcome(enum.StrEnum):
    """What became of one event (the metric's ``outcome`` label; the record's, from ``STARTED`` on)."""

    STARTED = "started"
    DEDUPED = "deduped"
    RATE_LIMITED = "rate_limited"
    COOLDOWN = "cooldown"
    CONDITION_FALSE = "condition_false"
    BAD_PAYLOAD = "bad_payload"
    FAILED = "failed"
    """It passed the gate but the agent could not be created (the store refused: disk full)."""


@dataclass(frozen=True, slots=True)
class GateRules:
    dedupe_s: float = 0.0
    cooldown_s: float = 0.0
    rate_limit: int | None = None


class Gate:
    """One trigger's gate; ``seed`` it with the starts the store recorded, so a restart keeps windows."""

    def __init__(self, rules: GateRules) -> None:
        self.rules = rules
        self._key_starts: dict[str, float] = {}
        self._starts: deque[float] = deque()
        self.last_start: float | None = None

    def seed(self, starts: Iterable[tuple[str, float]]) -> None:
        """Note earlier starts, (key, at), oldest first."""
        for key, at in starts:
            self.started(key, at)

    def decide(self, key: str, now: float) -> Outcome:
        """The outcome for an event with ``key`` at ``now``; a STARTED must be followed by ``started``."""
        r = self.rules
        at = self._key_starts.get(key)
        if r.dedupe_s and at is not None and now - at < r.dedupe_s:
            return Outcome.DEDUPED
        if r.cooldown_s and self.last_start is not None and now - self.last_start < r.cooldown_s:
            return Outcome.COOLDOWN
        while self._starts and now - self._starts[0] >= RATE_WINDOW_S:
            self._starts.popleft()
        if r.rate_limit is not None and len(self._starts) >= r.rate_limit:
            return Outcome.RATE_LIMITED
        return Outcome.STARTED

    def started(self, key: str, now: float) -> None:
        """An agent was started for ``key`` at ``now``."""
        self._key_starts[key] = now
        self._starts.append(now)
        self.last_start = now if self.last_start is None else max(self.last_start, now)
        if len(self._key_starts) > 10_000:  # keys whose window closed long ago
            horizon = now - self.rules.dedupe_s
            self._key_starts = {k: t for k, t in self._key_starts.items() if t > horizon}


def holds(payload: object, field: str, op: str, value: float | bool | str) -> bool:
    """Whether ``payload``'s ``field`` ``op`` ``value``; ``TemplateError`` when the field is missing,
    ``TypeError`` when it cannot be compared (both: a bad payload)."""
    got = lookup(payload, field)
    if isinstance(value, bool):
        if not isinstance(got, bool | int):
            raise TypeError(f"{field} is {got!r}, not a boolean")
        left: object = bool(got)
    elif isinstance(value, int | float):
        left = _number(got, field)
    else:
        left = got if isinstance(got, str) else str(got)
    return _compare(left, op, value)


def _number(got: object, field: str) -> float:
    if isinstance(got, bool) or not isinstance(got, int | float | str):
        raise TypeError(f"{field} is {got!r}, not a number")
    try:
        return float(got)
    except ValueError:
        raise TypeError(f"{field} is {got!r}, not a number") from None


def _compare(left: object, op: str, right: object) -> bool:
    if op == "==":
        return left == right
    if op == "!=":
        return left != right
    assert isinstance(left, float)
    assert isinstance(right, int | float)
    return {">": left > right, ">=": left >= right, "<": left < right, "<=": left <= right}[op]
