"""Goals (issue 7): a goal is planned into a DAG of tasks, each task runs as an agent on a device,
and the results are joined into the goal's answer.

``GoalService`` is what the daemon and the API hold; it wires four parts, each with one job:

- ``GoalStore`` (store.py): the ``edgehub-goals`` bucket, one ``Goal`` record per goal, changed only
  by compare-and-set, so any hub process may advance any goal and a restarted hub loses nothing; and
  this process's watched view of the goals;
- ``ModelWork`` (work.py): planning (the hub's own model via ``planner.py``, or an operator's plan),
  re-planning, the answer's synthesis, and taking that work up where a hub process died;
- ``EffectRunner`` (effects.py): what the scheduler (``schedule.py``, pure) decides: StartAgent /
  StopAgent commands with fixed ids, sub-goals, reports to a parent goal;
- ``ResultIntake`` (intake.py): ``TaskResult`` events through the hub's event applier (``on_events``),
  each advancing its goal at once.

Itself it takes operators' requests (submit, decide, cancel) and every ``tick_s`` advances each running
goal (devices gone offline, retries due, approvals).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry

from edgehub.llm import Brain
from edgehub.protocol.errors import ErrorCode
from edgehub.protocol.v1 import events_pb2, goals_pb2, scope_pb2, task_pb2
from edgehub.sync import any_set
from edgehub.sync.tracing import traceparent

from ..config import PlannerConfig
from ..errors import GoalError
from ..fleet.agents import AgentRegistry
from ..hubmodel import HubModel
from ..tracing import HubTracing
from .effects import EffectRunner, GoalMetrics
from .intake import ResultIntake
from .placement import DeviceView
from .record import GOAL_ENDED, MODEL_WORK, audit, goal_word, new_record, task_word
from .schedule import Effects, advance, busy_of, end_goal, goal_devices
from .store import GoalStore, Transition
from .work import ModelWork

G = goals_pb2

log = logging.getLogger("edgehub.hub.goals.service")

MAX_TEXT = 4000
"""Characters of a goal's text."""
MAX_SELECTOR = 32
"""Labels in a goal's device selector, and tools in its approval rules."""
MAX_PLAN_BYTES = 64_000
"""An operator's plan, serialised (the record stays well under NATS's 1 MB)."""
PRUNE_EVERY_S = 60.0


class GoalService:
    """The hub's planner and dispatcher (see the module docstring). ``devices`` gives the hub's live view
    of the devices; ``brain`` replaces the model ``cfg`` names (tests of the planner's logic); ``agents``
    registers each task agent to its device before its StartAgent is sent (its own over ``js`` when
    None)."""

    def __init__(
        self,
        js: JetStreamContext,
        devices: Callable[[], Awaitable[list[DeviceView]]],
        cfg: PlannerConfig,
        *,
        brain: Brain | None = None,
        issued_by: str = "hub:planner",
        metrics: CollectorRegistry | None = None,
        agents: AgentRegistry | None = None,
        tracing: HubTracing | None = None,
        model: HubModel | None = None,
    ) -> None:
        self.js = js
        self.devices = devices
        self.cfg = cfg
        self.issued_by = issued_by
        self.store = GoalStore(js)
        self.tracing = tracing or HubTracing()
        self.metrics = GoalMetrics.create(metrics, lambda: len(self.store.active))
        self.work = ModelWork(
            self.store, cfg, issued_by, brain=brain, update=self.update, fleet=self.fleet, tick=self.tick,
            tracing=self.tracing, model=model,
        )  # fmt: skip
        self.effects = EffectRunner(
            js, cfg, self.metrics, submit=self.submit, report=self.on_result,
            replan=self.work.plan, synthesise=self.work.synthesise,
            reserve=(agents or AgentRegistry(js)).reserve, tracing=self.tracing,
        )  # fmt: skip
        self.intake = ResultIntake(
            self.store, cfg, issued_by, self.metrics, update=self.update, devices=self.devices
        )
        self._wake = asyncio.Event()

    async def update(self, goal_id: str, change: Transition) -> G.Goal:
        """Change the goal by compare-and-set and carry out the effects of what was stored."""
        record, _ = await self.store.update(goal_id, change, self.effects.carry_out)
        return record

    # operators -------------------------------------------------------------------------------------
    async def submit(
        self,
        text: str,
        *,
        by: str,
        labels: Mapping[str, str] | None = None,
        budget: G.GoalBudget | None = None,
        plan: G.PlanDraft | None = None,
        approve_tools: Sequence[str] | None = None,
        parent: G.GoalParent | None = None,
        depth: int = 0,
        goal_id: str = "",
        wait: bool = True,
        scope: scope_pb2.Scope | None = None,
    ) -> G.Goal:
        """Store the goal, plan it (the model, or the operator's ``plan``) and start it; its tasks run
        only on devices in ``scope`` (its submitter's; none: the whole fleet). With ``wait``, returns
        once planned (status running, or failed with the planner's reasons)."""
        text = text.strip()
        _check_request(text, labels or {}, budget, plan, approve_tools or (), planner_on=self.cfg.enabled)
        record = new_record(
            text, by=by, labels=labels, budget=budget, approve_tools=approve_tools or (), plan=plan,
            planner=G.GOAL_PLANNER_MODEL if plan is None else G.GOAL_PLANNER_OPERATOR,
            parent=parent, depth=depth, goal_id=goal_id, scope=scope,
        )  # fmt: skip
        with self.tracing.goal(record):  # kept in the record: its tasks' spans join this trace
            record.trace_parent = traceparent()
            if not await self.store.create(record):  # a sub-goal started again after a crash: it exists
                return (await self.get(goal_id)) if goal_id else record
            log.info("goal %s submitted by %s: %s", record.goal_id, by, text[:120])
            task = self.work.plan(record.goal_id)
            if wait:
                return await asyncio.shield(task)
            return record

    async def get(self, goal_id: str) -> G.Goal:
        """The goal as stored; ``GoalError`` (NOT_FOUND) when there is none."""
        return await self.store.read(goal_id)

    async def all(self) -> list[G.Goal]:
        """Every goal record, oldest first (``ListGoals``; the scheduler reads its watched view)."""
        return await self.store.all()

    async def decide(self, goal_id: str, task_id: str, approve: bool, by: str, note: str = "") -> G.Goal:
        """An operator's decision on a task held for approval: it runs, or the goal fails (audited)."""

        def change(record: G.Goal) -> Effects:
            fx, now = Effects(), time.time()
            state = record.tasks.get(task_id)
            if state is None:
                raise GoalError(ErrorCode.NOT_FOUND, f"goal {goal_id} has no task {task_id!r}")
            if state.status != G.TASK_STATUS_APPROVAL:
                why = f"task {task_id} is {task_word(state.status)}, not awaiting approval"
                raise GoalError(ErrorCode.FAILED_PRECONDITION, why)
            state.approval.CopyFrom(G.TaskApproval(approve=approve, by=by, at=now, note=note[:500]))
            verdict = "approved" if approve else "denied"
            audit(record, f"task {task_id} {verdict}" + (f": {note[:200]}" if note else ""), by, now)
            if approve:
                state.status = G.TASK_STATUS_WAITING
                return fx
            state.status, state.finished_at = G.TASK_STATUS_DENIED, now
            reason = f"task {task_id} was denied by {by}" + (f" ({note[:200]})" if note else "")
            end_goal(record, G.GOAL_STATUS_FAILED, reason, now, self.issued_by, fx, by)
            return fx

        record = await self.update(goal_id, change)
        self._wake.set()
        return record

    async def cancel(self, goal_id: str, by: str, reason: str = "") -> G.Goal:
        """End the goal: its running tasks are stopped, nothing more is dispatched."""

        def change(record: G.Goal) -> Effects:
            fx = Effects()
            if record.status in GOAL_ENDED:
                why = f"goal {goal_id} is already {goal_word(record.status)}"
                raise GoalError(ErrorCode.FAILED_PRECONDITION, why)
            why = reason or f"cancelled by {by}"
            end_goal(record, G.GOAL_STATUS_CANCELLED, why, time.time(), self.issued_by, fx, by)
            return fx

        return await self.update(goal_id, change)

    # the fleet and the results ---------------------------------------------------------------------
    async def fleet(self, record: G.Goal) -> list[DeviceView]:
        """The devices a goal may use (its selector's, in its scope: ``goal_devices``)."""
        return goal_devices(await self.devices(), record)

    async def on_events(
        self, events: Iterable[events_pb2.EdgeEvent]
    ) -> list[tuple[events_pb2.EdgeEvent, str]]:
        """Task results and first steps of the applied event batch (``ResultIntake.on_events``)."""
        return await self.intake.on_events(events)

    async def on_result(self, result: task_pb2.TaskResult, device: str) -> None:
        """A task's result (``ResultIntake.on_result``)."""
        await self.intake.on_result(result, device)

    # the scheduler ---------------------------------------------------------------------------------
    async def tick(self, goal_id: str | None = None) -> None:
        """Advance one goal, or every running goal this process knows of."""
        now = time.time()
        devices = await self.devices()
        for gid in [goal_id] if goal_id else list(self.store.active):
            record = self.store.active.get(gid)
            if record is not None and record.status in MODEL_WORK:
                continue

            def change(r: G.Goal, gid: str = gid) -> Effects:
                mine = goal_devices(devices, r)
                return advance(r, mine, busy_of(self.store.others(gid)), now, self.cfg, self.issued_by)

            try:
                await self.update(gid, change)
            except GoalError as exc:
                log.warning("goal %s: %s", gid, exc.message)
                self.store.active.pop(gid, None)

    async def watch(self, stop: asyncio.Event) -> None:
        """Keep this process's view of the goals current until ``stop`` (``GoalStore.follow``)."""
        await self.store.follow(stop)

    async def prune(self, now: float) -> int:
        """Delete the records of goals that ended more than ``keep_ended_days`` ago; how many."""
        return await self.store.prune(now, self.cfg.keep_ended_days)

    async def run(self, stop: asyncio.Event) -> None:
        """Advance running goals every ``tick_s`` until stopped (results advance theirs at once); keep
        the view of the goals current; re-plan orphans; prune old ended goals."""
        watching = asyncio.create_task(self.watch(stop), name="goal-watch")
        pruned_at = 0.0
        try:
            while not stop.is_set():
                now = time.time()
                try:
                    self.work.resume_orphans(now)
                    await self.tick()
                    if now - pruned_at > PRUNE_EVERY_S:
                        pruned_at = now
                        await self.prune(now)
                except Exception as exc:  # NATS restarting: the next round retries
                    log.warning("goal scheduling round failed: %s: %s", type(exc).__name__, exc)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(any_set(stop, self._wake), self.cfg.tick_s)
        finally:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)

    async def close(self) -> None:
        """Stop the model's work in progress and close the model."""
        await self.work.close()


def _check_request(
    text: str,
    labels: Mapping[str, str],
    budget: G.GoalBudget | None,
    plan: G.PlanDraft | None,
    approve_tools: Sequence[str],
    *,
    planner_on: bool,
) -> None:
    """``GoalError`` naming what is wrong with a goal's request (INVALID_ARGUMENT), or that it needs the
    planner model this hub does not run (FAILED_PRECONDITION)."""

    def bad(message: str) -> GoalError:
        return GoalError(ErrorCode.INVALID_ARGUMENT, message)

    if not text.strip():
        raise bad("the goal's text is empty" if not text else "the goal's text is only whitespace")
    if len(text) > MAX_TEXT:
        raise bad(f"the goal is {len(text)} characters; at most {MAX_TEXT}")
    if plan is None and not planner_on:
        raise GoalError(
            ErrorCode.FAILED_PRECONDITION, "this hub's planner is off ([planner] enabled = false)"
        )
    for field, value in budget.ListFields() if budget is not None else ():
        if value < 0:
            raise bad(f"budget {field.name} is negative ({value})")
    for what, items, count in (
        ("labels", [*labels.keys(), *labels.values()], len(labels)),
        ("approve_tools", list(approve_tools), len(approve_tools)),
    ):
        if count > MAX_SELECTOR or any(not x or len(x) > 64 for x in items):
            raise bad(f"{what}: at most {MAX_SELECTOR} entries of 1 to 64 characters")
    if plan is not None and (size := plan.ByteSize()) > MAX_PLAN_BYTES:
        raise bad(f"the plan is {size} bytes; at most {MAX_PLAN_BYTES}")
