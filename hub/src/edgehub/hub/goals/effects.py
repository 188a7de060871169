"""Carrying out what a stored goal transition asks for (``schedule.Effects``): StartAgent / StopAgent
commands (fixed ids, so a resend after a crash is deduplicated), sub-goals started as goals of their
own, re-plans and syntheses handed to the model's work, and a sub-goal's end reported to its parent as
its task's result. Also the goals' metrics, counted here and by the result intake.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from nats.js import JetStreamContext
from opentelemetry import context as otel_context
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client import Counter as PromCounter

from edgehub.protocol.v1 import agent_pb2, commands_pb2, goals_pb2, scope_pb2, task_pb2
from edgehub.sync.commands import send_command
from edgehub.sync.tracing import linked

from ..config import PlannerConfig
from ..errors import Refused
from ..tracing import HubTracing
from .record import goal_word, limits_of
from .schedule import Effects

G = goals_pb2

log = logging.getLogger("edgehub.hub.goals.effects")
S = agent_pb2


@dataclass(frozen=True)
class GoalMetrics:
    """The goals' Prometheus metrics (and the gauge of active goals, read when scraped)."""

    dispatched: PromCounter
    ended: PromCounter
    tokens: PromCounter
    goals_ended: PromCounter
    """Goals (and sub-goals) that reached a final status, by status (done, failed, cancelled)."""

    @classmethod
    def create(cls, registry: CollectorRegistry | None, active: Callable[[], int]) -> GoalMetrics:
        """The metrics in ``registry`` (a private one when None); ``active`` counts the active goals."""
        reg = registry or CollectorRegistry()
        goals = Gauge("edgehub_hub_goals_active", "Goals planning or running", registry=reg)
        goals.set_function(active)
        return cls(
            PromCounter(
                "edgehub_hub_tasks_dispatched", "Task attempts sent to devices", ["device"], registry=reg
            ),
            PromCounter(
                "edgehub_hub_tasks_ended", "Task attempts that ended, by outcome", ["outcome"], registry=reg
            ),
            PromCounter(
                "edgehub_hub_task_tokens",
                "Tokens (evaluated + generated) spent by tasks",
                ["device"],
                registry=reg,
            ),
            PromCounter(
                "edgehub_hub_goals_ended",
                "Goals (sub-goals included) that ended, by final status (done, failed, cancelled)",
                ["status"],
                registry=reg,
            ),
        )


class Submit(Protocol):
    """``GoalService.submit`` as a sub-goal is started."""

    def __call__(
        self,
        text: str,
        *,
        by: str,
        labels: dict[str, str] | None = None,
        budget: G.GoalBudget | None = None,
        approve_tools: list[str] | None = None,
        parent: G.GoalParent | None = None,
        depth: int = 0,
        goal_id: str = "",
        wait: bool = True,
        scope: scope_pb2.Scope | None = None,
    ) -> Awaitable[G.Goal]: ...


class EffectRunner:
    """Carries out ``Effects`` once their goal's record is stored. ``submit`` starts a sub-goal,
    ``report`` takes a task's result (a sub-goal's end, for its parent), ``replan`` and ``synthesise``
    start the model's work on a goal, ``reserve`` registers a task agent to its device before its
    StartAgent is sent (``AgentRegistry.reserve``)."""

    def __init__(
        self,
        js: JetStreamContext,
        cfg: PlannerConfig,
        metrics: GoalMetrics,
        *,
        submit: Submit,
        report: Callable[[task_pb2.TaskResult, str], Awaitable[None]],
        replan: Callable[[str, str], object],
        synthesise: Callable[[str], object],
        reserve: Callable[[str, str], Awaitable[None]],
        tracing: HubTracing | None = None,
    ) -> None:
        self.js = js
        self.tracing = tracing or HubTracing()
        self.cfg = cfg
        self.metrics = metrics
        self._submit = submit
        self._report = report
        self._replan = replan
        self._synthesise = synthesise
        self._reserve = reserve

    async def carry_out(self, record: G.Goal, fx: Effects) -> None:
        """Everything ``fx`` asks for, now that ``record`` (with the transition) is stored."""
        for cmd in fx.commands:
            starts = cmd.WhichOneof("body") == "start_agent"
            if starts and not await self._registered(cmd):
                continue
            with self.tracing.command(record, cmd):  # its headers carry the span to the edge
                await send_command(self.js, cmd)
            if starts:
                self.metrics.dispatched.labels(cmd.device_id).inc()
        for tid, text in fx.subgoals:
            token = otel_context.attach(linked(record.trace_parent))  # a sub-goal: in its parent's trace
            try:
                await self._start_subgoal(record, tid, text)
            finally:
                otel_context.detach(token)
        if fx.replan:
            self._replan(record.goal_id, fx.replan)
        if fx.synthesise:
            self._synthesise(record.goal_id)
        if fx.ended and record.HasField("parent"):
            await self._report_to_parent(record)
        if fx.ended:
            self.tracing.ended(record)
            self.metrics.goals_ended.labels(goal_word(record.status)).inc()
            error = f": {record.error}" if record.error else ""
            log.info("goal %s %s%s", record.goal_id, goal_word(record.status), error)

    async def _registered(self, cmd: commands_pb2.Command) -> bool:
        """The task agent registered to its device before the device hears of it (False, logged: the
        id belongs to another device, which the hub's namespace makes a bug, never a device's doing)."""
        try:
            await self._reserve(cmd.start_agent.agent_id, cmd.device_id)
        except Refused as exc:
            log.error("task agent not started: %s", exc.message)
            return False
        return True

    async def _start_subgoal(self, parent: G.Goal, tid: str, text: str) -> None:
        """The task ``tid`` of ``parent`` as a goal of its own, under the parent's selector, scope,
        approval rules and what is left of its token budget."""
        left = limits_of(parent, self.cfg).tokens - parent.usage.tokens
        await self._submit(
            text,
            by=f"goal {parent.goal_id}",
            labels=dict(parent.labels),
            budget=G.GoalBudget(max_tokens=max(1, left)),
            approve_tools=list(parent.approve_tools),
            parent=G.GoalParent(goal_id=parent.goal_id, task_id=tid),
            depth=parent.depth + 1,
            goal_id=parent.tasks[tid].subgoal_id,
            wait=False,
            scope=parent.scope,
        )

    async def _report_to_parent(self, child: G.Goal) -> None:
        """A sub-goal ended: its parent's task ends with the sub-goal's answer (or error) and usage."""
        parent = child.parent
        done = child.status == G.GOAL_STATUS_DONE
        result = task_pb2.TaskResult(
            task_id=f"{parent.goal_id}/{parent.task_id}",
            agent_id=child.goal_id,
            status=S.AGENT_STATUS_FINISHED if done else S.AGENT_STATUS_FAILED,
            answer=child.answer,
            failure_reason=child.error,
            usage=agent_pb2.Usage(completion_tokens=child.usage.tokens, tool_calls=child.usage.tool_calls),
        )
        await self._report(result, "hub")
