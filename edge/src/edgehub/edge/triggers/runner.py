"""The trigger runner: the daemon's helper that runs every enabled trigger's source and turns the events
that pass into agents.

For each event: the condition (``gate.holds``), the goal and dedupe key from their templates, the gate
(dedupe, cooldown, rate limit), then the record and, for a start, the PENDING agent, in one store
transaction (``record_trigger``); the scheduler starts it at once through the same path ``submit``
uses. Everything is local: a trigger fires and its agent runs while the hub is unreachable, and the
agent's events wait in the outbox, PII-masked by the store like every outgoing event. Metrics count
every event by outcome; the store records those that passed the condition.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import Counter

from edgehub.protocol.v1 import agent_pb2

from ..agent.loop import new_agent
from ..errors import EdgeError
from ..goaltemplate import GoalTemplate, TemplateError
from ..store.base import TriggerEvent, TriggerLog
from ..triggerspec import Trigger
from .base import Source
from .gate import RATE_WINDOW_S, Gate, GateRules, Outcome, holds

log = logging.getLogger("edgehub.edge.triggers")


@dataclass(slots=True)
class TriggerSink:
    """One trigger's handling of its events (``base.Sink``)."""

    trigger: Trigger
    store: TriggerLog
    schedule: Callable[[], None]
    """Starts what is ready now (``AgentScheduler.schedule``)."""
    counter: Counter | None = None
    """``edgehub_edge_trigger_events`` (None: not counted)."""
    device_id: str = ""
    clock: Callable[[], float] = time.time
    gate: Gate = field(init=False)
    goal: GoalTemplate = field(init=False)
    key: GoalTemplate = field(init=False)
    last_event: float | None = None
    """When the last event (of any outcome) arrived."""

    def __post_init__(self) -> None:
        t = self.trigger
        self.gate = Gate(GateRules(t.dedupe_s, t.cooldown_s, t.rate_limit))
        self.goal = GoalTemplate(t.goal)
        self.key = GoalTemplate(t.dedupe_key)
        horizon = max(t.dedupe_s, t.cooldown_s, RATE_WINDOW_S)
        self.gate.seed(self.store.trigger_starts(t.id, self.clock() - horizon))

    async def event(
        self, payload: object, fields: dict[str, object], *, checked: bool = False
    ) -> tuple[Outcome, str]:
        now = self.clock()
        self.last_event = now
        t = self.trigger
        event = {**fields, "trigger": t.id, "kind": t.kind, "payload": payload}
        event["received_at"] = dt.datetime.fromtimestamp(now, dt.UTC).isoformat(timespec="milliseconds")
        try:
            if t.condition is not None and not checked:
                c = t.condition
                if not holds(payload, c.field, c.op, c.value):
                    return self._count(Outcome.CONDITION_FALSE), ""
            goal, key = self.goal.fill(event), self.key.fill(event)
        except (TemplateError, TypeError) as exc:
            self.bad_payload(str(exc))
            return Outcome.BAD_PAYLOAD, ""
        return self._decide(event, goal, key, now)

    def bad_payload(self, why: str) -> None:
        log.info("trigger %s: event ignored: %s", self.trigger.id, why)
        self._count(Outcome.BAD_PAYLOAD)

    def _decide(self, event: dict[str, object], goal: str, key: str, now: float) -> tuple[Outcome, str]:
        outcome = self.gate.decide(key, now)
        digest = hashlib.sha256(json.dumps(event, sort_keys=True, default=str).encode()).hexdigest()
        agent: agent_pb2.AgentState | None = None
        agent_id = ""
        if outcome is Outcome.STARTED:
            agent_id = f"agent-{uuid.uuid4().hex[:12]}"
            agent = new_agent(agent_id, goal, self.trigger.budget(), "", self.trigger.tools)
        record = TriggerEvent(self.trigger.id, key, digest, now, outcome.value, agent_id)
        try:
            self.store.record_trigger(record, agent)
        except EdgeError as exc:  # a full or rolled-back store: nothing started, the daemon goes on
            log.warning("trigger %s: event not recorded: %s", self.trigger.id, exc)
            return self._count(Outcome.FAILED), ""
        if agent is not None:
            self.gate.started(key, now)
            log.info("trigger %s started agent %s", self.trigger.id, agent_id)
            self.schedule()
        return self._count(outcome), agent_id

    def _count(self, outcome: Outcome) -> Outcome:
        if self.counter is not None:
            self.counter.labels(self.device_id, self.trigger.id, outcome.value).inc()
        return outcome


class TriggerRunner:
    """Runs the sources of ``triggers`` (enabled ones) until ``stop``; ``sinks`` by trigger id."""

    def __init__(
        self,
        triggers: list[Trigger],
        store: TriggerLog,
        schedule: Callable[[], None],
        *,
        device_id: str,
        counter: Counter | None = None,
        nats: Callable[[], object | None] = lambda: None,
    ) -> None:
        self.device_id = device_id
        self.nats = nats
        """The device's hub connection (a ``nats.aio.client.Client``; None: not connected/no hub)."""
        self.sinks = {
            t.id: TriggerSink(t, store, schedule, counter, device_id) for t in triggers if t.enabled
        }
        self.sources: dict[str, Source] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Start every source; when ``stop`` is set, cancel them (a source holds nothing to drain)."""
        from .sources import build_source  # imported here: the clients load only when triggers run

        self.sources = {
            tid: build_source(s.trigger, s, self.nats, self.device_id) for tid, s in self.sinks.items()
        }
        tasks = [
            asyncio.create_task(_guarded(tid, src), name=f"trigger-{tid}")
            for tid, src in self.sources.items()
        ]
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _guarded(trigger_id: str, source: Source) -> None:
    """Run a source; one that fails outright is logged and retried after a pause, never taking the
    daemon (or the other triggers) down. What a site engineer can fix (a missing token, a port in use)
    is one line; anything else is a bug and logged with its traceback."""
    while True:
        try:
            await source.run()
            return
        except asyncio.CancelledError:
            raise
        except (OSError, ValueError) as exc:
            log.error("trigger %s cannot run: %s; retrying in 5 s", trigger_id, exc)
        except Exception:
            log.exception("trigger %s: its source failed; retrying in 5 s", trigger_id)
        with contextlib.suppress(TimeoutError):
            await asyncio.sleep(5)
