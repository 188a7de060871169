"""The planner model's work on goals: planning a goal (the hub's model via ``planner.py``, or the
operator's plan), re-planning it after a task failed every attempt, synthesising its answer from its
last tasks' results, and taking up that work where a hub process died in the middle of it.

Each piece of work runs in a task of its own, one at a time per goal, and stores its outcome through
``update`` (a compare-and-set of the goal, its effects carried out) like any other transition.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from edgehub.llm import Brain, Completion
from edgehub.protocol.v1 import goals_pb2

from ..config import PlannerConfig
from ..hubmodel import HubModel
from ..tracing import HubTracing
from .errors import PlanRejected, SynthesisFailed
from .placement import DeviceView
from .planner import Planned, plan_given, plan_with_model, synthesise_with_model
from .record import GOAL_ENDED, MODEL_WORK, adopt_plan, goal_word, may_split, plan_limits, sinks
from .schedule import Effects, end_goal, finish_synthesis
from .store import GoalStore, Transition

G = goals_pb2

log = logging.getLogger("edgehub.hub.goals.work")

PLANNING_STALE_S = 120.0
"""A goal in planning (or synthesising) this long without a write, and not being worked on here, is
planned (synthesised) again."""

Update = Callable[[str, Transition], Awaitable[G.Goal]]
Fleet = Callable[[G.Goal], Awaitable[list[DeviceView]]]


class ModelWork:
    """Planning, re-planning and synthesis of goals (see the module docstring). ``model``: the hub's
    shared model (``hubmodel.py``; None: its own, ``brain`` or the model ``cfg`` names; ``brain``
    replaces it in tests of the planner's logic); ``update`` stores a transition, ``fleet`` gives
    the devices a goal may use, ``tick`` advances a goal once it is planned; ``tracing`` traces each
    piece of work in its goal's trace."""

    def __init__(
        self,
        store: GoalStore,
        cfg: PlannerConfig,
        issued_by: str,
        *,
        brain: Brain | None,
        update: Update,
        fleet: Fleet,
        tick: Callable[[str], Awaitable[None]],
        tracing: HubTracing | None = None,
        model: HubModel | None = None,
    ) -> None:
        self.store = store
        self.tracing = tracing or HubTracing()
        self.cfg = cfg
        self.issued_by = issued_by
        self._owns_model = model is None
        self.model = model or HubModel(cfg, brain=brain)
        self._update = update
        self._fleet = fleet
        self._tick = tick
        self.running: dict[str, asyncio.Task[G.Goal]] = {}
        """Goal id -> its model work in progress in this process."""

    def plan(self, goal_id: str, replan: str = "") -> asyncio.Task[G.Goal]:
        """Plan the goal (``replan``: why its rest is planned again)."""
        return self._spawn(goal_id, lambda gid: self._plan(gid, replan))

    def synthesise(self, goal_id: str) -> asyncio.Task[G.Goal]:
        """Write the goal's answer from its last tasks' results."""
        return self._spawn(goal_id, self._synthesise)

    def _spawn(
        self, goal_id: str, work: Callable[[str], Coroutine[Any, Any, G.Goal]]
    ) -> asyncio.Task[G.Goal]:
        """Plan or synthesise ``goal_id`` in a task of its own, after the goal's earlier model work has
        ended: one at a time per goal, none lost (a plan's own first round can finish the goal, or
        ask for a re-plan, before the planning task has ended). Each kind of work checks the goal's
        status first, so work that is no longer due does nothing."""
        before = self.running.get(goal_id)

        async def in_turn() -> G.Goal:
            if before is not None and not before.done():
                await asyncio.wait({before})  # its outcome is its own; this one runs either way
            return await work(goal_id)

        task = asyncio.create_task(in_turn(), name=f"model-{goal_id}")
        self.running[goal_id] = task
        task.add_done_callback(
            lambda t: self.running.pop(goal_id, None) if self.running.get(goal_id) is t else None
        )
        return task

    def resume_orphans(self, now: float) -> None:
        """Goals left in planning or synthesising by a hub process that died: taken up again here."""
        for gid, record in list(self.store.active.items()):
            stale = now - record.updated_at > PLANNING_STALE_S
            if record.status not in MODEL_WORK or not stale or gid in self.running:
                continue
            log.info(
                "goal %s: its %s stopped (a hub process died?); again here", gid, goal_word(record.status)
            )
            if record.status == G.GOAL_STATUS_PLANNING:
                self.plan(gid)
            else:
                self.synthesise(gid)

    # the model -------------------------------------------------------------------------------------
    async def _complete(self, prompt: str, schema: dict[str, object], max_tokens: int) -> Completion:
        gate = await self.model.gate()
        return await gate.complete(prompt, json_schema=dict(schema), max_tokens=max_tokens)

    async def close(self) -> None:
        """Cancel the work in progress; close the model if it is this object's own."""
        for task in list(self.running.values()):
            task.cancel()
        await asyncio.gather(*self.running.values(), return_exceptions=True)
        if self._owns_model:
            self.model.close()

    # planning --------------------------------------------------------------------------------------
    async def _plan(self, goal_id: str, replan: str) -> G.Goal:
        """Plan (or re-plan) the goal and store the revision; the goal fails when no plan passes."""
        record = await self.store.read(goal_id)
        with self.tracing.work("goal.plan", record, replan=bool(replan)):
            planned, failure = await self._draft(record, replan)

        def change(r: G.Goal) -> Effects:
            fx, now = Effects(), time.time()
            if r.status in GOAL_ENDED or (not replan and r.status != G.GOAL_STATUS_PLANNING):
                return fx  # ended meanwhile, or another hub process planned it first
            if planned is None:
                why = f"no valid {'re-plan' if replan else 'plan'}: {failure}"
                end_goal(r, G.GOAL_STATUS_FAILED, why, now, self.issued_by, fx)
                return fx
            if replan:
                r.replans += 1
            adopt_plan(r, planned, replan or "submitted", now)
            return fx

        record = await self._update(goal_id, change)
        await self._tick(goal_id)
        found = await self.store.get(goal_id)
        return found.value if found is not None else record

    async def _draft(self, record: G.Goal, replan: str) -> tuple[Planned | None, str]:
        """A plan for ``record`` that passed validation, or None and why there is none."""
        fleet = await self._fleet(record)
        limits = plan_limits(record, self.cfg)
        subgoals = may_split(record, self.cfg.max_goal_depth)
        try:
            if record.HasField("plan") and not replan:
                return plan_given(record.plan, fleet, limits, subgoals=subgoals), ""
            done = {tid: s.answer for tid, s in record.tasks.items() if s.status == G.TASK_STATUS_DONE}
            text = record.text
            if done:
                text += "\nAlready done (do not plan these again):\n" + "\n".join(
                    f"- {tid}: {a[:200]}" for tid, a in done.items()
                )
            planned = await plan_with_model(
                self._complete, text, fleet, limits, attempts=self.cfg.attempts,
                max_tokens=self.cfg.max_tokens, depth=record.depth, subgoals=subgoals,
                feedback=[replan] if replan else (),
            )  # fmt: skip
            return planned, ""
        except PlanRejected as exc:
            return None, exc.reason
        except Exception as exc:  # the model file missing, NATS down: the goal says so
            log.exception("planning goal %s failed", record.goal_id)
            return None, f"the planner failed: {type(exc).__name__}: {exc}"

    # the answer ------------------------------------------------------------------------------------
    async def _synthesise(self, goal_id: str) -> G.Goal:
        """Ask the model for the goal's answer from its last tasks' results and finish the goal; when
        the model fails, the goal is done with their answers joined and says why."""
        record = await self.store.read(goal_id)
        if record.status != G.GOAL_STATUS_SYNTHESISING:
            return record
        results = [(tid, record.tasks[tid].answer) for tid in sinks(record)]
        answer, tokens, error = "", 0, ""
        try:
            with self.tracing.work("goal.synthesise", record):
                answer, tokens = await synthesise_with_model(
                    self._complete, record.text, results, max_tokens=self.cfg.synthesis_tokens
                )
        except SynthesisFailed as exc:
            tokens, error = exc.tokens, exc.reason
        except Exception as exc:  # the model file missing, llama.cpp failing: the joined answers serve
            log.exception("synthesising the answer of goal %s failed", goal_id)
            error = f"the planner failed: {type(exc).__name__}: {exc}"
        now = time.time()
        return await self._update(goal_id, lambda r: finish_synthesis(r, answer, tokens, error, now))
