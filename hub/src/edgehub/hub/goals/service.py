"""Goals (issue 7): a goal is planned into a DAG of tasks, each task runs as an agent on a device,
and the results are joined into the goal's answer.

Each goal is one record in JetStream KV (``edgehub-goals``, key: the goal id; its format and the
scheduler are ``planning/schedule.py``), changed only by compare-and-set, so any hub process may
advance any goal and a restarted hub loses nothing. ``GoalService`` plans (the hub's own model via
``planning/planner.py``, or an operator's plan), stores, and carries out what the scheduler decides:
StartAgent / StopAgent commands with fixed ids, sub-goals, re-plans. Task results arrive as
``TaskResult`` events through the hub's event applier (``on_events``) and advance their goal at once;
every ``tick_s`` each running goal is advanced too (devices gone offline, retries due, approvals).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.errors import MaxPayloadError
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client import Counter as PromCounter

from edgehub.llm import Brain, Completion, ModelGate
from edgehub.protocol.errors import ErrorCode
from edgehub.protocol.ids import kv_key
from edgehub.protocol.v1 import agent_pb2, events_pb2, hub_pb2, task_pb2
from edgehub.sync import any_set
from edgehub.sync.commands import send_command
from edgehub.sync.records import RecordStore
from edgehub.sync.streams import GOALS

from ..config import PlannerConfig
from ..errors import GoalError
from .errors import PlanRejected, SynthesisFailed
from .placement import DeviceView
from .planner import plan_given, plan_with_model, synthesise_with_model
from .schedule import (
    ACTIVE,
    GOAL_ENDED,
    SCHEMA_VERSION,
    Effects,
    adopt_plan,
    advance,
    apply_result,
    audit,
    busy_of,
    end_goal,
    finish_synthesis,
    limits_of,
    new_record,
    plan_limits,
    sinks,
    summary,
)

log = logging.getLogger("edgehub.hub.goals.service")
S = agent_pb2

MAX_TEXT = 4000
"""Characters of a goal's text."""
CONCURRENT_GOALS = 64
"""Goals whose events of one batch are applied at the same time."""
PLANNING_STALE_S = 120.0
"""A goal in planning (or synthesising) this long without a write, and not being worked on here, is
planned (synthesised) again."""
MODEL_WORK = frozenset({"planning", "synthesising"})
"""Goal statuses in which the model, not the scheduler, moves the goal on."""
MAX_SELECTOR = 32
"""Labels in a goal's device selector, and tools in its approval rules."""


def _strings(item: str | tuple[str, str]) -> tuple[str, ...]:
    return item if isinstance(item, tuple) else (item,)


PERMANENT = (GoalError, MaxPayloadError, ValueError, KeyError, TypeError)
"""Failures repeating a goal update cannot cure (a record too big or malformed): its event is
dead-lettered rather than redelivered for ever."""


def to_proto(record: dict[str, Any], *, full: bool = True) -> hub_pb2.Goal:
    return hub_pb2.Goal(
        goal_id=record["goal_id"],
        status=record["status"],
        answer=record.get("answer", ""),
        error=record.get("error", ""),
        revision=len(record.get("revisions", [])),
        record_json=json.dumps(record) if full else json.dumps(summary(record)),
    )


class _Json:
    """Goal records as JSON, until they become typed records (the goals part of issue 16)."""

    def encode(self, value: dict[str, Any]) -> bytes:
        return json.dumps(value).encode()

    def decode(self, data: bytes) -> dict[str, Any]:
        record: dict[str, Any] = json.loads(data or b"{}")
        return record


# the service ---------------------------------------------------------------------------------------
@dataclass
class _Entry:
    record: dict[str, Any]
    revision: int | None


class GoalService:
    """The hub's planner and dispatcher (see the module docstring). ``devices`` gives the hub's live view
    of the devices; ``brain`` replaces the model ``cfg`` names (tests of the planner's logic)."""

    def __init__(
        self,
        js: JetStreamContext,
        devices: Callable[[], Awaitable[list[DeviceView]]],
        cfg: PlannerConfig,
        *,
        brain: Brain | None = None,
        issued_by: str = "hub:planner",
        metrics: CollectorRegistry | None = None,
    ) -> None:
        self.js = js
        self.devices = devices
        self.cfg = cfg
        self.issued_by = issued_by
        self._brain = brain
        self._owns_brain = brain is None
        self._gate: ModelGate | None = ModelGate(brain) if brain is not None else None
        self._kv: KeyValue | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._active: dict[str, dict[str, Any]] = {}
        """Goals not ended, as this process last wrote, read or watched them."""
        self._revisions: dict[str, int] = {}
        self._ended: dict[str, float] = {}
        """Ended goals -> when they ended, until their records are pruned (``[planner] keep_ended_days``)."""
        self._agents: dict[str, tuple[str, str]] = {}
        """Task agent id -> (goal, task) until its first step event is seen (when the agent began)."""
        self._planning: dict[str, asyncio.Task[dict[str, Any]]] = {}
        self._wake = asyncio.Event()
        reg = metrics or CollectorRegistry()
        self.m_dispatched = PromCounter(
            "edgehub_hub_tasks_dispatched", "Task attempts sent to devices", ["device"], registry=reg
        )
        self.m_ended = PromCounter(
            "edgehub_hub_tasks_ended", "Task attempts that ended, by outcome", ["outcome"], registry=reg
        )
        self.m_tokens = PromCounter(
            "edgehub_hub_task_tokens",
            "Tokens (evaluated + generated) spent by tasks",
            ["device"],
            registry=reg,
        )
        self.m_goals = Gauge("edgehub_hub_goals_active", "Goals planning or running", registry=reg)
        self.m_goals.set_function(lambda: len(self._active))

    # storage -------------------------------------------------------------------------------------
    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self.js.key_value(GOALS.name)
        return self._kv

    async def _read(self, goal_id: str) -> _Entry | None:
        try:
            entry = await (await self._bucket()).get(kv_key(goal_id))
        except KeyNotFoundError:
            return None
        record = json.loads(entry.value or b"{}")
        if int(record.get("schema_version", 0)) != SCHEMA_VERSION:
            raise GoalError(
                ErrorCode.FAILED_PRECONDITION,
                f"goal {goal_id}: record version {record.get('schema_version')}",
            )
        return _Entry(record, int(entry.revision or 0))

    async def _write(self, record: dict[str, Any], revision: int | None) -> None:
        record["updated_at"] = time.time()
        data = json.dumps(record).encode()
        kv = await self._bucket()
        if revision is None:
            written = await kv.create(kv_key(record["goal_id"]), data)
        else:
            written = await kv.update(kv_key(record["goal_id"]), data, last=revision)
        self._remember(record, int(written))

    def _remember(self, record: dict[str, Any], revision: int) -> None:
        """This process's view of a goal, from its own write or read or from the watch (which can
        deliver a write after a newer one this process made: the newer revision stays)."""
        gid = record["goal_id"]
        if revision < self._revisions.get(gid, 0):
            return
        self._revisions[gid] = revision
        if record["status"] in GOAL_ENDED:
            self._active.pop(gid, None)
            self._locks.pop(gid, None)
            self._ended[gid] = float(record.get("finished_at") or record.get("updated_at") or time.time())
        else:
            self._active[gid] = record
        for tid, state in record["tasks"].items():
            if state.get("agent_id"):
                if state["status"] in ACTIVE and not state.get("timed"):
                    self._agents[state["agent_id"]] = (gid, tid)
                else:
                    self._agents.pop(state["agent_id"], None)

    async def _update(
        self, goal_id: str, change: Callable[[dict[str, Any]], Awaitable[Effects] | Effects]
    ) -> tuple[dict[str, Any], Effects]:
        """Read, change, compare-and-set (again on a conflict), then carry out the effects."""
        lock = self._locks.setdefault(goal_id, asyncio.Lock())
        async with lock:
            for _ in range(16):
                found = await self._read(goal_id)
                if found is None:
                    raise GoalError(ErrorCode.NOT_FOUND, f"no goal {goal_id!r}")
                before = json.dumps(found.record, sort_keys=True)
                fx = change(found.record)
                if isinstance(fx, Awaitable):
                    fx = await fx
                if json.dumps(found.record, sort_keys=True) == before:  # nothing to store (a quiet tick)
                    self._remember(found.record, found.revision or 0)
                    return found.record, fx
                try:
                    await self._write(found.record, found.revision)
                except KeyWrongLastSequenceError:
                    continue  # another hub process advanced it: read again
                await self._carry_out(found.record, fx)
                return found.record, fx
        raise GoalError(ErrorCode.ABORTED, f"goal {goal_id}: 16 conflicting writes in a row; retry")

    async def _carry_out(self, record: dict[str, Any], fx: Effects) -> None:
        for cmd in fx.commands:
            await send_command(self.js, cmd)
            if cmd.WhichOneof("body") == "start_agent":
                self.m_dispatched.labels(cmd.device_id).inc()
        for tid, text in fx.subgoals:
            await self._start_subgoal(record, tid, text)
        if fx.replan:
            self._spawn_planning(record["goal_id"], fx.replan)
        if fx.synthesise:
            self._spawn_model_work(record["goal_id"], self._synthesise)
        if fx.ended and record.get("parent"):
            await self._report_to_parent(record)
        if fx.ended:
            log.info(
                "goal %s %s%s",
                record["goal_id"],
                record["status"],
                f": {record['error']}" * bool(record["error"]),
            )

    # operators -----------------------------------------------------------------------------------
    async def submit(
        self,
        text: str,
        *,
        by: str,
        labels: dict[str, str] | None = None,
        budget: dict[str, float] | None = None,
        plan_json: str = "",
        approve_tools: list[str] | None = None,
        parent: dict[str, str] | None = None,
        depth: int = 0,
        goal_id: str = "",
        wait: bool = True,
    ) -> dict[str, Any]:
        """Store the goal, plan it (the model, or ``plan_json``) and start it. With ``wait``, returns
        once planned (status running, or failed with the planner's reasons)."""
        text = text.strip()
        if not text:
            raise GoalError(ErrorCode.INVALID_ARGUMENT, "the goal's text is empty")
        if len(text) > MAX_TEXT:
            raise GoalError(
                ErrorCode.INVALID_ARGUMENT, f"the goal is {len(text)} characters; at most {MAX_TEXT}"
            )
        if not plan_json and not self.cfg.enabled:
            raise GoalError(
                ErrorCode.FAILED_PRECONDITION, "this hub's planner is off ([planner] enabled = false)"
            )
        for key, value in (budget or {}).items():
            if value < 0:
                raise GoalError(ErrorCode.INVALID_ARGUMENT, f"budget {key} is negative ({value})")
        for what, items in (("labels", list((labels or {}).items())), ("approve_tools", approve_tools or [])):
            if len(items) > MAX_SELECTOR or any(
                not x or len(x) > 64 for item in items for x in _strings(item)
            ):
                raise GoalError(
                    ErrorCode.INVALID_ARGUMENT,
                    f"{what}: at most {MAX_SELECTOR} entries of 1 to 64 characters",
                )
        record = new_record(
            text,
            by=by,
            labels=dict(labels or {}),
            budget=dict(budget or {}),
            approve_tools=list(approve_tools or []),
            planner="operator" if plan_json else "model",
            parent=parent,
            depth=depth,
            goal_id=goal_id,
        )
        if plan_json:
            record["plan_json"] = plan_json[:64_000]
        try:
            await self._write(record, None)
        except KeyWrongLastSequenceError:  # a sub-goal started again after a crash: it exists
            return (await self.get(goal_id)) if goal_id else record
        log.info("goal %s submitted by %s: %s", record["goal_id"], by, text[:120])
        task = self._spawn_planning(record["goal_id"], "")
        if wait:
            return await asyncio.shield(task)
        return record

    async def get(self, goal_id: str) -> dict[str, Any]:
        found = await self._read(goal_id)
        if found is None:
            raise GoalError(ErrorCode.NOT_FOUND, f"no goal {goal_id!r}")
        return found.record

    async def all(self) -> list[dict[str, Any]]:
        """Every goal record, oldest first (``ListGoals``; the scheduler reads its watched view)."""
        records = [s.value for s in await RecordStore(self.js, GOALS.name, _Json()).list()]
        return sorted(records, key=lambda r: float(r.get("submitted_at", 0)))

    async def decide(
        self, goal_id: str, task_id: str, approve: bool, by: str, note: str = ""
    ) -> dict[str, Any]:
        def change(record: dict[str, Any]) -> Effects:
            fx = Effects()
            state = record["tasks"].get(task_id)
            if state is None:
                raise GoalError(ErrorCode.NOT_FOUND, f"goal {goal_id} has no task {task_id!r}")
            if state["status"] != "approval":
                raise GoalError(
                    ErrorCode.FAILED_PRECONDITION,
                    f"task {task_id} is {state['status']}, not awaiting approval",
                )
            now = time.time()
            state["approval"] = {"approve": approve, "by": by, "at": now, "note": note[:500]}
            verdict = "approved" if approve else "denied"
            audit(record, f"task {task_id} {verdict}" + (f": {note[:200]}" if note else ""), by, now)
            if approve:
                state["status"] = "waiting"
                return fx
            state.update(status="denied", finished_at=now)
            reason = f"task {task_id} was denied by {by}" + (f" ({note[:200]})" if note else "")
            end_goal(record, "failed", reason, now, self.issued_by, fx, by)
            return fx

        record, _ = await self._update(goal_id, change)
        self._wake.set()
        return record

    async def cancel(self, goal_id: str, by: str, reason: str = "") -> dict[str, Any]:
        def change(record: dict[str, Any]) -> Effects:
            fx = Effects()
            if record["status"] in GOAL_ENDED:
                raise GoalError(
                    ErrorCode.FAILED_PRECONDITION, f"goal {goal_id} is already {record['status']}"
                )
            end_goal(record, "cancelled", reason or f"cancelled by {by}", time.time(), self.issued_by, fx, by)
            return fx

        return (await self._update(goal_id, change))[0]

    # planning ------------------------------------------------------------------------------------
    def _spawn_planning(self, goal_id: str, replan: str) -> asyncio.Task[dict[str, Any]]:
        return self._spawn_model_work(goal_id, lambda gid: self._plan(gid, replan))

    def _spawn_model_work(
        self, goal_id: str, work: Callable[[str], Coroutine[Any, Any, dict[str, Any]]]
    ) -> asyncio.Task[dict[str, Any]]:
        """Plan or synthesise ``goal_id`` in a task of its own, after the goal's earlier model work has
        ended: one at a time per goal, none lost (a plan's own first round can finish the goal, or
        ask for a re-plan, before the planning task has ended). Each kind of work checks the goal's
        status first, so work that is no longer due does nothing."""
        before = self._planning.get(goal_id)

        async def in_turn() -> dict[str, Any]:
            if before is not None and not before.done():
                await asyncio.wait({before})  # its outcome is its own; this one runs either way
            return await work(goal_id)

        task = asyncio.create_task(in_turn(), name=f"model-{goal_id}")
        self._planning[goal_id] = task
        task.add_done_callback(
            lambda t: self._planning.pop(goal_id, None) if self._planning.get(goal_id) is t else None
        )
        return task

    async def _complete(self, prompt: str, schema: dict[str, object], max_tokens: int) -> Completion:
        if self._gate is None:
            self._brain = await asyncio.to_thread(self._load)
            self._gate = ModelGate(self._brain)
        return await self._gate.complete(prompt, json_schema=dict(schema), max_tokens=max_tokens)

    def _load(self) -> Brain:
        from edgehub.llm.llama import LlamaBrain  # here: a hub that never plans never loads llama.cpp

        return LlamaBrain.open(self.cfg.llama_settings("planner"))

    async def fleet(self, labels: dict[str, str]) -> list[DeviceView]:
        return _selected(await self.devices(), labels)

    async def _plan(self, goal_id: str, replan: str) -> dict[str, Any]:
        """Plan (or re-plan) the goal and store the revision; the goal fails when no plan passes."""
        found = await self._read(goal_id)
        if found is None:
            raise GoalError(ErrorCode.NOT_FOUND, f"no goal {goal_id!r}")
        record = found.record
        fleet = await self.fleet(record["labels"])
        limits = plan_limits(record, self.cfg)
        subgoals = record["depth"] < self.cfg.max_goal_depth
        try:
            if record.get("plan_json") and not replan:
                planned = plan_given(record["plan_json"], fleet, limits, subgoals=subgoals)
            else:
                done = {
                    tid: s.get("answer", "") for tid, s in record["tasks"].items() if s["status"] == "done"
                }
                text = record["text"]
                if done:
                    text += "\nAlready done (do not plan these again):\n" + "\n".join(
                        f"- {tid}: {a[:200]}" for tid, a in done.items()
                    )
                planned = await plan_with_model(
                    self._complete, text, fleet, limits, attempts=self.cfg.attempts,
                    max_tokens=self.cfg.max_tokens, depth=record["depth"], subgoals=subgoals,
                    feedback=[replan] if replan else (),
                )  # fmt: skip
            failure = ""
        except PlanRejected as exc:
            planned, failure = None, exc.reason
        except Exception as exc:  # the model file missing, NATS down: the goal says so
            log.exception("planning goal %s failed", goal_id)
            planned, failure = None, f"the planner failed: {type(exc).__name__}: {exc}"

        def change(r: dict[str, Any]) -> Effects:
            fx = Effects()
            now = time.time()
            if r["status"] in GOAL_ENDED or (not replan and r["status"] != "planning"):
                return fx  # ended meanwhile, or another hub process planned it first
            if planned is None:
                what = "re-plan" if replan else "plan"
                end_goal(r, "failed", f"no valid {what}: {failure}", now, self.issued_by, fx)
                return fx
            if replan:
                r["replans"] = int(r.get("replans", 0)) + 1
            adopt_plan(r, planned, replan or "submitted", now)
            return fx

        record, _ = await self._update(goal_id, change)
        await self.tick(goal_id)
        return (await self._read(goal_id) or _Entry(record, None)).record

    async def _synthesise(self, goal_id: str) -> dict[str, Any]:
        """Ask the model for the goal's answer from its last tasks' results and finish the goal; when
        the model fails, the goal is done with their answers joined and says why."""
        found = await self._read(goal_id)
        if found is None:
            raise GoalError(ErrorCode.NOT_FOUND, f"no goal {goal_id!r}")
        record = found.record
        if record["status"] != "synthesising":
            return record
        results = [(tid, str(record["tasks"][tid].get("answer", ""))) for tid in sinks(record)]
        answer, tokens, error = "", 0, ""
        try:
            answer, tokens = await synthesise_with_model(
                self._complete, record["text"], results, max_tokens=self.cfg.synthesis_tokens
            )
        except SynthesisFailed as exc:
            tokens, error = exc.tokens, exc.reason
        except Exception as exc:  # the model file missing, llama.cpp failing: the joined answers serve
            log.exception("synthesising the answer of goal %s failed", goal_id)
            error = f"the planner failed: {type(exc).__name__}: {exc}"
        now = time.time()
        record, _ = await self._update(goal_id, lambda r: finish_synthesis(r, answer, tokens, error, now))
        return record

    # sub-goals -----------------------------------------------------------------------------------
    async def _start_subgoal(self, parent: dict[str, Any], tid: str, text: str) -> None:
        await self.submit(
            text,
            by=f"goal {parent['goal_id']}",
            labels=parent["labels"],
            budget={"max_tokens": max(1, limits_of(parent, self.cfg).tokens - parent["usage"]["tokens"])},
            approve_tools=parent["approve_tools"],
            parent={"goal_id": parent["goal_id"], "task_id": tid},
            depth=int(parent["depth"]) + 1,
            goal_id=parent["tasks"][tid]["subgoal_id"],
            wait=False,
        )

    async def _report_to_parent(self, child: dict[str, Any]) -> None:
        parent = child["parent"]
        status = S.AGENT_STATUS_FINISHED if child["status"] == "done" else S.AGENT_STATUS_FAILED
        usage = agent_pb2.Usage(
            completion_tokens=int(child["usage"]["tokens"]), tool_calls=int(child["usage"]["tool_calls"])
        )
        result = task_pb2.TaskResult(
            task_id=f"{parent['goal_id']}/{parent['task_id']}",
            agent_id=child["goal_id"],
            status=status,
            answer=child["answer"],
            failure_reason=child["error"],
            usage=usage,
        )
        await self.on_result(result, "hub")

    # results and ticks ---------------------------------------------------------------------------
    async def on_events(
        self, events: Iterable[events_pb2.EdgeEvent]
    ) -> list[tuple[events_pb2.EdgeEvent, str]]:
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
            elif kind == "step" and event.agent_id in self._agents:
                by_goal.setdefault(self._agents[event.agent_id][0], []).append(event)
        limit = asyncio.Semaphore(CONCURRENT_GOALS)

        async def apply(goal_events: list[events_pb2.EdgeEvent]) -> list[tuple[events_pb2.EdgeEvent, str]]:
            refused = []
            async with limit:
                for event in goal_events:
                    try:
                        if event.WhichOneof("body") == "task_result":
                            await self.on_result(event.task_result, event.device_id)
                        elif event.agent_id in self._agents:
                            await self._started(event)
                    except PERMANENT as exc:
                        log.error(
                            "event %s from %s: goal not updated: %s", event.event_id, event.device_id, exc
                        )
                        refused.append((event, f"goal not updated: {type(exc).__name__}: {exc}"[:500]))
            return refused

        done = await asyncio.gather(*(apply(evs) for evs in by_goal.values()))
        return [r for rs in done for r in rs]

    async def _started(self, event: events_pb2.EdgeEvent) -> None:
        goal_id, tid = self._agents[event.agent_id]

        def change(record: dict[str, Any]) -> Effects:
            state = record["tasks"].get(tid, {})
            if state.get("agent_id") == event.agent_id and state.get("status") in ACTIVE:
                step = event.step  # the step's commit time less its duration: when the agent began
                at = step.at.ToMilliseconds() / 1000 if step.HasField("at") else time.time()
                began = at - step.timings.total_ms / 1000
                state.update(status="running", started_at=min(began, state.get("started_at") or began))
                state["timed"] = True
            return Effects()

        self._agents.pop(event.agent_id, None)  # one first step is enough
        with contextlib.suppress(GoalError):
            await self._update(goal_id, change)

    async def on_result(self, result: Any, device: str) -> None:
        goal_id, _, tid = result.task_id.partition("/")
        if not goal_id or not tid:
            log.warning(
                "task result of %s with a malformed task id %r ignored", result.agent_id, result.task_id[:80]
            )
            return
        now = time.time()
        devices = await self.fleet({})

        def change(record: dict[str, Any]) -> Effects:
            fx = apply_result(record, tid, result, device, now, self.cfg)
            mine = _selected(devices, record["labels"])
            return fx.then(
                advance(record, mine, busy_of(self._others(goal_id)), now, self.cfg, self.issued_by)
            )

        try:
            await self._update(goal_id, change)
        except GoalError as exc:
            log.warning("task result %s from %s ignored: %s", result.task_id[:80], device, exc.message)
            return
        outcome = "finished" if result.status == S.AGENT_STATUS_FINISHED else "failed"
        self.m_ended.labels(outcome).inc()
        self.m_tokens.labels(device).inc(result.usage.evaluated_tokens + result.usage.completion_tokens)

    def _others(self, goal_id: str) -> list[dict[str, Any]]:
        return [r for gid, r in self._active.items() if gid != goal_id]

    async def tick(self, goal_id: str | None = None) -> None:
        """Advance one goal, or every running goal this process knows of."""
        now = time.time()
        devices = await self.fleet({})
        for gid in [goal_id] if goal_id else list(self._active):
            record = self._active.get(gid)
            if record is not None and record["status"] in MODEL_WORK:
                continue
            labels = (record or {}).get("labels", {})
            mine = _selected(devices, labels)

            def change(r: dict[str, Any], mine: list[DeviceView] = mine, gid: str = gid) -> Effects:
                return advance(r, mine, busy_of(self._others(gid)), now, self.cfg, self.issued_by)

            try:
                await self._update(gid, change)
            except GoalError as exc:
                log.warning("goal %s: %s", gid, exc.message)
                self._active.pop(gid, None)

    async def watch(self, stop: asyncio.Event) -> None:
        """Keep this process's view of the goals current with every hub process's writes (a watch on
        the bucket: its snapshot at start, then each write once), re-watching after any error."""
        while not stop.is_set():
            try:
                watcher = await (await self._bucket()).watchall()
                try:
                    while not stop.is_set():
                        try:
                            entry = await watcher.updates(timeout=0.5)
                        except nats.errors.TimeoutError:
                            continue
                        if entry is not None:  # None: the end of the snapshot
                            self._seen(entry)
                finally:
                    with contextlib.suppress(Exception):
                        await watcher.stop()
            except Exception as exc:  # NATS restarting: watch again
                log.warning("goal watch failed (%s: %s); watching again", type(exc).__name__, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)

    def _seen(self, entry: KeyValue.Entry) -> None:
        if entry.operation in (KV_DEL, KV_PURGE):
            self._active.pop(entry.key, None)
            self._ended.pop(entry.key, None)
            return
        try:
            record = json.loads(entry.value or b"{}")
            if int(record.get("schema_version", 0)) == SCHEMA_VERSION:
                self._remember(record, int(entry.revision or 0))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:  # not a goal this hub can read
            log.debug("goal record %s unreadable: %s", entry.key, exc)

    def _resume_orphans(self, now: float) -> None:
        """Goals left in planning or synthesising by a hub process that died: taken up again here."""
        for gid, record in list(self._active.items()):
            stale = now - float(record.get("updated_at", 0)) > PLANNING_STALE_S
            if record["status"] not in MODEL_WORK or not stale or gid in self._planning:
                continue
            log.info("goal %s: its %s stopped (a hub process died?); again here", gid, record["status"])
            if record["status"] == "planning":
                self._spawn_planning(gid, "")
            else:
                self._spawn_model_work(gid, self._synthesise)

    async def prune(self, now: float) -> int:
        """Delete the records of goals that ended more than ``keep_ended_days`` ago; how many."""
        horizon = now - self.cfg.keep_ended_days * 86400
        old = [gid for gid, ended in self._ended.items() if ended < horizon]
        kv = await self._bucket()
        for gid in old:
            await kv.purge(kv_key(gid))
            self._ended.pop(gid, None)
        if old:
            log.info("%d ended goals older than %g days pruned", len(old), self.cfg.keep_ended_days)
        return len(old)

    async def run(self, stop: asyncio.Event) -> None:
        """Advance running goals every ``tick_s`` until stopped (results advance theirs at once); keep
        the view of the goals current; re-plan orphans; prune old ended goals."""
        watching = asyncio.create_task(self.watch(stop), name="goal-watch")
        pruned_at = 0.0
        try:
            while not stop.is_set():
                now = time.time()
                try:
                    self._resume_orphans(now)
                    await self.tick()
                    if now - pruned_at > 60:
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
        for task in list(self._planning.values()):
            task.cancel()
        await asyncio.gather(*self._planning.values(), return_exceptions=True)
        if self._brain is not None and self._owns_brain:
            with contextlib.suppress(Exception):
                self._brain.close()
            self._brain = None


def _selected(devices: list[DeviceView], labels: dict[str, str]) -> list[DeviceView]:
    """The devices a goal's selector allows (all, without one: the common case costs nothing)."""
    return [d for d in devices if d.matches(labels, {})] if labels else devices
