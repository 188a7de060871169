"""Task agents' reports applied to their goals: ``TaskResult`` events (a task's end) and the first step
of each task agent (when it began), as the hub's event applier hands them over (``on_events``), and
a sub-goal's end reported for its parent's task (``on_result``). A result advances its goal at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from nats.errors import MaxPayloadError

from edgehub.protocol.v1 import agent_pb2, events_pb2, goals_pb2, task_pb2

from ..config import PlannerConfig
from ..errors import GoalError
from .effects import GoalMetrics
from .placement import DeviceView
from .record import ACTIVE
from .schedule import Effects, advance, apply_result, busy_of, goal_devices
from .store import GoalStore, Transition

G = goals_pb2

log = logging.getLogger("edgehub.hub.goals.intake")
S = agent_pb2

CONCURRENT_GOALS = 64
"""Goals whose events of one batch are applied at the same time."""
PERMANENT = (GoalError, MaxPayloadError, ValueError, KeyError, TypeError)
"""Failures repeating a goal update cannot cure (a record too big or malformed, a count out of the
record's range): its event is dead-lettered rather than redelivered for ever."""
Refused = list[tuple[events_pb2.EdgeEvent, str]]


class ResultIntake:
    """Applies task agents' reports to their goals (see the module docstring). ``update`` stores a
    transition; ``devices`` gives the hub's live view of the fleet."""

    def __init__(
        self,
        store: GoalStore,
        cfg: PlannerConfig,
        issued_by: str,
        metrics: GoalMetrics,
        *,
        update: Callable[[str, Transition], Awaitable[G.Goal]],
        devices: Callable[[], Awaitable[list[DeviceView]]],
    ) -> None:
        self.store = store
        self.cfg = cfg
        self.issued_by = issued_by
        self.metrics = metrics
        self._update = update
        self._devices = devices

    async def on_events(self, events: Iterable[events_pb2.EdgeEvent]) -> Refused:
        """Task results (and first steps, for timings) from the applied event batch. Returns the
        results that can never be applied (a record that cannot be written), with the reason, for the
        dead letters; a transient failure (NATS) raises, so the batch is delivered again.

        Each goal's events are applied in order; different goals' at the same time (every goal update
        is a read and a synced compare-and-set: one after another, a burst of results queued for
        seconds, seen in bench/dispatch)."""
        by_goal: dict[str, list[events_pb2.EdgeEvent]] = {}
        for event in events:
            kind = event.WhichOneof("body")
            if kind == "task_result":
                by_goal.setdefault(event.task_result.task_id.partition("/")[0], []).append(event)
            elif kind == "step" and event.agent_id in self.store.agents:
                by_goal.setdefault(self.store.agents[event.agent_id][0], []).append(event)
        limit = asyncio.Semaphore(CONCURRENT_GOALS)

        async def apply(goal_events: list[events_pb2.EdgeEvent]) -> Refused:
            async with limit:
                return [r for event in goal_events if (r := await self._apply(event)) is not None]

        done = await asyncio.gather(*(apply(evs) for evs in by_goal.values()))
        return [r for rs in done for r in rs]

    async def _apply(self, event: events_pb2.EdgeEvent) -> tuple[events_pb2.EdgeEvent, str] | None:
        """One event applied; the event and why when it never can be."""
        try:
            if event.WhichOneof("body") == "task_result":
                await self.on_result(event.task_result, event.device_id)
            elif event.agent_id in self.store.agents:
                await self._started(event)
        except PERMANENT as exc:
            log.error("event %s from %s: goal not updated: %s", event.event_id, event.device_id, exc)
            return event, f"goal not updated: {type(exc).__name__}: {exc}"[:500]
        return None

    async def _started(self, event: events_pb2.EdgeEvent) -> None:
        """A task agent's first step: the task is running since the step began."""
        goal_id, tid = self.store.agents[event.agent_id]

        def change(record: G.Goal) -> Effects:
            state = record.tasks.get(tid)
            if state is not None and state.agent_id == event.agent_id and state.status in ACTIVE:
                step = event.step  # the step's commit time less its duration: when the agent began
                at = step.at.ToMilliseconds() / 1000 if step.HasField("at") else time.time()
                began = at - step.timings.total_ms / 1000
                state.status = G.TASK_STATUS_RUNNING
                state.started_at = min(began, state.started_at or began)
                state.timed = True
            return Effects()

        self.store.agents.pop(event.agent_id, None)  # one first step is enough
        with contextlib.suppress(GoalError):
            await self._update(goal_id, change)

    async def on_result(self, result: task_pb2.TaskResult, device: str) -> None:
        """A task's agent ended (or a sub-goal, for its parent's task): the result is applied and the
        goal advanced in one write. A result naming no goal or task, or an unknown one, is ignored."""
        goal_id, _, tid = result.task_id.partition("/")
        if not goal_id or not tid:
            log.warning(
                "task result of %s with a malformed task id %r ignored", result.agent_id, result.task_id[:80]
            )
            return
        now = time.time()
        devices = await self._devices()

        def change(record: G.Goal) -> Effects:
            fx = apply_result(record, tid, result, device, now, self.cfg)
            mine = goal_devices(devices, record)
            busy = busy_of(self.store.others(goal_id))
            return fx.then(advance(record, mine, busy, now, self.cfg, self.issued_by))

        try:
            await self._update(goal_id, change)
        except GoalError as exc:
            log.warning("task result %s from %s ignored: %s", result.task_id[:80], device, exc.message)
            return
        outcome = "finished" if result.status == S.AGENT_STATUS_FINISHED else "failed"
        self.metrics.ended.labels(outcome).inc()
        self.metrics.tokens.labels(device).inc(result.usage.evaluated_tokens + result.usage.completion_tokens)
