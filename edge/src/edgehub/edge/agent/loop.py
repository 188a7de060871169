"""The ReAct loop: think (model) -> decide (gateway) -> act (tool) -> observe -> checkpoint.

One step, in order:
1. budgets are checked; an exhausted budget ends the agent with the reason;
2. a pending intent for this step (crash in a previous life) supplies the proposal, so the model is
   not asked again and a non-idempotent call is never repeated; otherwise the L1 window is compacted
   if it must be and the model proposes a grammar-constrained action;
3. the execution gateway runs it (or turns it into an error observation);
4. state + mind-log event + turns + intent result + outbox entry commit in one transaction;
5. the stuck-loop monitor updates the agent's guard: a warning goes into the next prompt, a stop ends it.

A call that policy marks needs-approval does not end the step: the agent is checkpointed as
AWAITING_APPROVAL with the proposal, and the step resumes from that proposal once an operator decided.

Runs, steps and their phases are traced (``..tracing``) when the daemon gives the loop a tracer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgehub.llm import Completion, ModelGate
from edgehub.protocol.v1 import agent_pb2
from edgehub.testing import failpoints

from ..config import AgentConfig
from ..memory.compaction import Compactor
from ..memory.l1 import steps_to_compact
from ..store.base import Approval, EdgeStore
from ..tracing import AgentSpans
from .actions import Proposal, parse_action
from .base import StepMonitor
from .deliverables import extract
from .prompt import PromptBuilder
from .steering import Steering, copied_command
from .tools.base import CommandRunner, Knowledge, Recall, ToolContext
from .tools.gateway import ExecutionGateway
from .tools.registry import ToolRegistry

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

S = agent_pb2
log = logging.getLogger("edgehub.edge.agent")
STATE_SCHEMA_VERSION = 1
COMPACT_TO = 0.75
"""A compaction folds the window down to this share of its budget."""
EVENT_SCHEMA_VERSION = 1
TERMINAL = (S.AGENT_STATUS_FINISHED, S.AGENT_STATUS_FAILED, S.AGENT_STATUS_STOPPED)

CountFn = Callable[[str], int]


@dataclass(slots=True)
class Window:
    """L1 in memory: the turns after the summary, and their rendering in the prompt."""

    from_step: int
    turns: list[agent_pb2.Turn]
    text: str
    tokens: int
    """Tokens of ``text`` as rendered (turn wrappers and labels included), kept up to date."""

    def extend(self, turns: list[agent_pb2.Turn], text: str, tokens: int) -> None:
        self.turns.extend(turns)
        self.text += text
        self.tokens += tokens


@dataclass(frozen=True, slots=True)
class LoopDeps:
    """Everything a running agent uses; built once per daemon."""

    store: EdgeStore
    registry: ToolRegistry
    gateway: ExecutionGateway
    model: ModelGate
    count_tokens: CountFn
    compactor: Compactor
    cfg: AgentConfig
    device_id: str
    workspaces: Path
    n_ctx: int
    max_action_tokens: int
    monitor: StepMonitor | None = None
    sandbox: CommandRunner | None = None
    on_step: Callable[[agent_pb2.StepEvent], None] | None = None
    """Told about every committed action step (metrics)."""
    tracer: Tracer | None = None
    """Spans of runs, steps and phases (``..tracing``); None or the API's no-op tracer: none, at no cost."""
    memory: Recall | None = None
    """L3 episodic memory for the remember/recall tools (None: off)."""
    knowledge: Knowledge | None = None
    """The hub's L4 knowledge graph for the knowledge tool (None: no hub)."""


def event_id(state: agent_pb2.AgentState, kind: str) -> str:
    return f"{state.agent_id}/{state.epoch}/{state.step}/{kind}"


def new_agent(
    agent_id: str, goal: str, budget: agent_pb2.Budget | None = None, task_id: str = ""
) -> agent_pb2.AgentState:
    """A PENDING agent ready to be created in the store; ``task_id``: a hub-planned task, whose result
    the store reports when the agent ends."""
    state = S.AgentState(
        schema_version=STATE_SCHEMA_VERSION,
        agent_id=agent_id,
        goal=goal,
        status=S.AGENT_STATUS_PENDING,
        task_id=task_id,
    )
    if budget is not None:
        state.budget.CopyFrom(budget)
    state.created_at.GetCurrentTime()
    state.updated_at.GetCurrentTime()
    return state


class AgentLoop:
    """Steps agents until they end or ``stop`` is set; safe to resume after any crash."""

    def __init__(self, deps: LoopDeps) -> None:
        self.d = deps
        chat = deps.model.brain.chat_format if deps.cfg.prompt_format == "auto" else None
        self.prompts = PromptBuilder(deps.registry.specs(), chat=chat, plan=deps.cfg.plan)
        self.steer = Steering(
            deps.cfg, deps.registry, self.prompts, deps.count_tokens, deps.store, deps.workspaces
        )
        self._empty_task = deps.count_tokens(self.prompts.task("", ""))
        self._task_tokens: dict[str, int] = {}  # task block -> tokens; it changes only on compaction
        self._windows: dict[str, Window] = {}
        self._workspaces: set[str] = set()
        self._spans = AgentSpans(deps.tracer)

    async def run(self, agent_id: str, stop: asyncio.Event) -> agent_pb2.AgentState:
        state = self.d.store.load_agent(agent_id)
        with self._spans.run(state, self.d.device_id) as span:
            if state.status == S.AGENT_STATUS_PENDING:
                state.status = S.AGENT_STATUS_RUNNING
                if state.step == 0:
                    state.recalled[:] = await self._recall(state, state.goal)
                    state.deliverables.extend(extract(state.goal))
                self.d.store.update_agent(state)
            while state.status == S.AGENT_STATUS_RUNNING and not stop.is_set():
                state = await self.step(state)
            self._spans.run_ended(span, state)
        return state

    async def step(self, state: agent_pb2.AgentState) -> agent_pb2.AgentState:
        with self._spans.step(state):
            return await self._step(state)

    async def _step(self, state: agent_pb2.AgentState) -> agent_pb2.AgentState:
        started = time.perf_counter()
        reason = self._exhausted(state)
        if reason:
            return self._end(state, S.AGENT_STATUS_FAILED, reason)
        key = f"{state.agent_id}/{state.step}"
        completion: Completion | None = None
        replay = self._replayed_proposal(key)
        if replay is not None:
            proposal = replay
        else:
            state = await self._compact_if_needed(state)
            completion = await self._think(state)
            proposal = parse_action(completion.text)
        tool_started = time.perf_counter()
        with self._spans.phase("act") as span:
            result, output = await self._act(state, proposal, key)
            self._spans.acted(span, result)
        tool_ms = (time.perf_counter() - tool_started) * 1000
        if result.error == "needs_approval":
            return self._await_approval(state, proposal, result, completion)
        failpoints.hit("after_tool", state.step)
        new = self._commit(state, proposal, completion, result, output, started, tool_ms)
        failpoints.hit("after_checkpoint", state.step)
        return new

    def _replayed_proposal(self, key: str) -> Proposal | None:
        """The proposal of a step that already got one: a pending intent or a decided approval."""
        intent = self.d.store.get_intent(key)
        if intent is not None:
            return Proposal.from_json(intent.proposal_json)
        approval = self.d.store.get_approval(key)
        if approval is not None and approval.status != "pending":
            return Proposal.from_json(approval.proposal_json)
        return None

    def _await_approval(
        self,
        state: agent_pb2.AgentState,
        proposal: Proposal,
        result: agent_pb2.ToolResult,
        completion: Completion | None,
    ) -> agent_pb2.AgentState:
        """Checkpoint the agent as AWAITING_APPROVAL with its proposal; the step is not consumed."""
        new = S.AgentState()
        new.CopyFrom(state)
        new.status = S.AGENT_STATUS_AWAITING_APPROVAL
        if completion is not None:  # the model's work for this step is spent even though it waits
            new.usage.evaluated_tokens += completion.evaluated_tokens
            new.usage.completion_tokens += completion.completion_tokens
        new.updated_at.GetCurrentTime()
        event = self._event(new, S.STEP_KIND_APPROVAL_REQUESTED, "approval")
        event.thought = proposal.thought
        event.action.CopyFrom(S.ToolCall(tool=proposal.tool, args_json=proposal.args_json()))
        event.observation.CopyFrom(result)
        event.detail = result.output
        approval = Approval(
            key=result.idempotency_key,
            agent_id=state.agent_id,
            step=state.step,
            tool=proposal.tool,
            args_json=proposal.args_json(),
            proposal_json=proposal.to_json(),
            rule=result.decision.rule,
            reason=result.decision.reason,
        )
        self._checkpoint(new, event, [], approval=approval)
        return new

    # budgets ---------------------------------------------------------------------------------------
    def _limit(self, value: float, configured: float) -> float:
        return value if value > 0 else configured

    def _exhausted(self, state: agent_pb2.AgentState) -> str:
        b, u, c = state.budget, state.usage, self.d.cfg
        tokens = u.evaluated_tokens + u.completion_tokens
        checks = [
            (u.steps, self._limit(b.max_steps, c.max_steps), "step"),
            (tokens, self._limit(b.max_tokens, c.max_tokens), "token"),
            (u.tool_calls, self._limit(b.max_tool_calls, c.max_tool_calls), "tool-call"),
            (u.wall_seconds, self._limit(b.max_wall_seconds, c.max_wall_seconds), "wall-time"),
        ]
        for used, limit, what in checks:
            if used >= limit:
                return f"{what} budget exhausted ({used:g} of {limit:g}) before finishing"
        return ""

    # think -----------------------------------------------------------------------------------------
    def _window(self, state: agent_pb2.AgentState) -> Window:
        """The agent's L1 window; (re)loaded from L2 after a restart or a compaction."""
        window = self._windows.get(state.agent_id)
        if window is None or window.from_step != state.summarized_through:
            turns = self.d.store.turns(state.agent_id, from_step=state.summarized_through)
            text = self.prompts.turns(turns)
            window = Window(state.summarized_through, turns, text, self.d.count_tokens(text))
            self._windows[state.agent_id] = window
        return window

    def _prompt(self, state: agent_pb2.AgentState) -> str:
        window = self._window(state)
        task = self._task(state)
        warning = self.prompts.warning(state.guard.warning) if state.guard.warning else ""
        header = self.steer.header(state)
        return f"{header}{task}{window.text}{warning}{self.prompts.cue(state.step)}"

    async def _think(self, state: agent_pb2.AgentState) -> Completion:
        with self._spans.phase("think") as span:
            prompt = self._prompt(state)
            completion = await self.d.model.complete(
                prompt,
                json_schema=self.steer.schema(state, self._window(state).turns),
                max_tokens=self.d.max_action_tokens,
                special=self.prompts.special,
            )
            self._spans.thought(span, completion)
        return completion

    def _task(self, state: agent_pb2.AgentState) -> str:
        plan = state.plan if state.summarized_through > 0 else ()
        return self.prompts.task(state.goal, state.summary, state.recalled, plan)

    async def _recall(self, state: agent_pb2.AgentState, query: str) -> list[str]:
        """L3 memories for the task block, within ``recall_tokens`` (none when L3 is off)."""
        budget = self.d.cfg.recall_tokens
        if self.d.memory is None or budget <= 0:
            return []

        def fits(texts: list[str]) -> bool:
            return self.d.count_tokens(self.prompts.task("", "", texts)) - self._empty_task <= budget

        try:
            distilled = self.d.cfg.recall_style == "distilled"
            return await self.d.memory.recall_for_prompt(query, state.agent_id, fits, distilled=distilled)
        except Exception as exc:  # L3 is an aid: the agent works without it
            log.warning("recall for %s failed (%s: %s)", state.agent_id, type(exc).__name__, exc)
            return []

    def _window_budget(self, state: agent_pb2.AgentState) -> int:
        key = self._task(state)
        if key not in self._task_tokens:
            self._task_tokens.clear()
            self._task_tokens[key] = self.d.count_tokens(key)
        task = self._task_tokens[key]
        header = self.steer.header_tokens(state)
        room = self.d.n_ctx - header - task - self.d.max_action_tokens - 16
        configured = self.d.cfg.window_tokens
        return min(room, configured) if configured else room

    async def _compact_if_needed(self, state: agent_pb2.AgentState) -> agent_pb2.AgentState:
        window = self._window(state)
        budget = self._window_budget(state)
        if window.tokens <= budget:
            return state
        turns = window.turns
        # the turns' own tokens leave out their labels and the chat template's wrappers: charge those
        # too, so the rendered window (what the model gets) fits; and fold down to COMPACT_TO of the
        # budget, not just under it: each compaction changes the task block, so the next step
        # re-evaluates the whole window, and compacting at every step once full would cost that each time
        overhead = max(0, window.tokens - sum(t.tokens for t in turns))
        fold = steps_to_compact(turns, max(0, int(budget * COMPACT_TO) - overhead))
        if not fold:
            return state
        old = [t for t in turns if t.step < fold]
        with self._spans.phase("compact"):
            summary = await self.d.model.call(
                lambda: self.d.compactor.summarize(state.goal, state.summary, old, max_tokens=160)
            )
            new = S.AgentState()
            new.CopyFrom(state)
            new.summary, new.summarized_through = summary, fold
            new.recalled[:] = await self._recall(new, f"{state.goal} {summary}")
            event = self._event(new, S.STEP_KIND_COMPACTION, "compaction")
            event.detail = summary
            self._checkpoint(new, event, [])
        return new

    # act -------------------------------------------------------------------------------------------
    async def _act(
        self, state: agent_pb2.AgentState, proposal: Proposal, key: str
    ) -> tuple[agent_pb2.ToolResult, Any]:
        if not proposal.ok:
            return S.ToolResult(
                idempotency_key=key, ok=False, error="invalid_action", output=proposal.error
            ), None
        copied = copied_command(state, proposal)
        if copied:
            return S.ToolResult(idempotency_key=key, ok=False, error="from_memory", output=copied), None
        call = S.ToolCall(tool=proposal.tool, args_json=proposal.args_json(), idempotency_key=key)
        workspace = self.d.workspaces / state.agent_id
        if state.agent_id not in self._workspaces:
            workspace.mkdir(parents=True, exist_ok=True)
            self._workspaces.add(state.agent_id)
        ctx = ToolContext(
            agent_id=state.agent_id,
            step=state.step,
            idempotency_key=key,
            workspace=workspace,
            notes=self.d.store,
            sandbox=self.d.sandbox,
            memory=self.d.memory,
            knowledge=self.d.knowledge,
        )
        return await self.d.gateway.execute(call, ctx, proposal_json=proposal.to_json())

    # commit ----------------------------------------------------------------------------------------
    def _checkpoint(
        self,
        state: agent_pb2.AgentState,
        event: agent_pb2.StepEvent,
        turns: list[agent_pb2.Turn],
        result: agent_pb2.ToolResult | None = None,
        approval: Approval | None = None,
    ) -> None:
        with self._spans.phase("checkpoint"):
            self.d.store.checkpoint(state, event, turns, result, approval)
        self._spans.committed(event)

    def _event(
        self, state: agent_pb2.AgentState, kind: agent_pb2.StepKind.ValueType, name: str
    ) -> agent_pb2.StepEvent:
        event = S.StepEvent(
            schema_version=EVENT_SCHEMA_VERSION,
            event_id=event_id(state, name),
            agent_id=state.agent_id,
            device_id=self.d.device_id,
            epoch=state.epoch,
            step=state.step,
            kind=kind,
            status=state.status,
        )
        event.at.GetCurrentTime()
        return event

    def _commit(
        self,
        state: agent_pb2.AgentState,
        proposal: Proposal,
        completion: Completion | None,
        result: agent_pb2.ToolResult,
        output: Any,
        started: float,
        tool_ms: float,
    ) -> agent_pb2.AgentState:
        event = self._event(state, S.STEP_KIND_ACTION, "action")
        event.thought = proposal.thought
        if proposal.ok:
            event.action.CopyFrom(S.ToolCall(tool=proposal.tool, args_json=proposal.args_json()))
            event.action.idempotency_key = result.idempotency_key
        event.observation.CopyFrom(result)
        new = S.AgentState()
        new.CopyFrom(state)
        u = new.usage
        u.steps += 1
        u.tool_calls += int(proposal.ok and result.error not in ("unknown_tool", "invalid_args"))
        if completion is not None:
            u.prompt_tokens += completion.prompt_tokens
            u.evaluated_tokens += completion.evaluated_tokens
            u.completion_tokens += completion.completion_tokens
            event.tokens.CopyFrom(
                S.TokenCounts(
                    prompt=completion.prompt_tokens,
                    evaluated=completion.evaluated_tokens,
                    completion=completion.completion_tokens,
                )
            )
            event.timings.model_ms = completion.eval_ms + completion.decode_ms
        self.steer.take_plan(new, event, proposal)
        if output is not None and output.finish and result.ok:
            self.steer.finish_or_return(new, event, result)
        if new.status != S.AGENT_STATUS_FINISHED:
            self._guard(new, event, proposal, result)
        new.step += 1
        turns = self._turns(state.step, proposal, result, completion)
        turns += self.steer.plan_turns(state.step, new, proposal, result)
        event.status = new.status
        event.timings.tool_ms = tool_ms
        u.wall_seconds += time.perf_counter() - started
        event.timings.total_ms = (time.perf_counter() - started) * 1000
        new.updated_at.GetCurrentTime()
        window = self._window(state)  # before the commit: loading it after would include this step's turns
        self._checkpoint(new, event, turns, result)
        text = self.prompts.turns(turns)
        window.extend(turns, text, self.d.count_tokens(text))
        if self.d.on_step is not None:
            self.d.on_step(event)
        return new

    def _guard(
        self,
        new: agent_pb2.AgentState,
        event: agent_pb2.StepEvent,
        proposal: Proposal,
        result: agent_pb2.ToolResult,
    ) -> None:
        """Let the stuck-loop monitor judge this step; it may warn (prompt) or stop (FAILED) the agent."""
        if self.d.monitor is None:
            return
        call = (
            f"{proposal.tool} {proposal.args_json()}"
            if proposal.ok
            else f"invalid action: {proposal.error[:60]}"
        )
        verdict = self.d.monitor.observe(new.guard, proposal.thought, call, failed=not result.ok)
        new.guard.CopyFrom(verdict.guard)
        if verdict.action == "warn":
            event.detail = f"warning: {verdict.reason}; the agent was told to re-plan"
        elif verdict.action == "stop":
            new.status, new.failure_reason = S.AGENT_STATUS_FAILED, verdict.reason
            event.detail = verdict.reason

    def _turns(
        self, step: int, proposal: Proposal, result: agent_pb2.ToolResult, completion: Completion | None
    ) -> list[agent_pb2.Turn]:
        observation = result.output if result.ok else f"error ({result.error}): {result.output}"
        # the model already counted what it generated; only the observation needs the tokenizer
        action_tokens = completion.completion_tokens if completion else self.d.count_tokens(proposal.raw)
        return [
            S.Turn(step=step, role="action", text=proposal.raw, tokens=action_tokens),
            S.Turn(step=step, role="observation", text=observation, tokens=self.d.count_tokens(observation)),
        ]

    def _end(
        self, state: agent_pb2.AgentState, status: agent_pb2.AgentStatus.ValueType, reason: str
    ) -> agent_pb2.AgentState:
        new = S.AgentState()
        new.CopyFrom(state)
        new.status, new.failure_reason = status, reason
        new.updated_at.GetCurrentTime()
        event = self._event(new, S.STEP_KIND_END, "end")
        event.detail = reason
        self._checkpoint(new, event, [])
        self._windows.pop(state.agent_id, None)
        return new

    def end(
        self, agent_id: str, status: agent_pb2.AgentStatus.ValueType, reason: str
    ) -> agent_pb2.AgentState:
        """End a non-terminal agent with ``status`` (FAILED or STOPPED) and the reason, checkpointed."""
        state = self.d.store.load_agent(agent_id)
        if state.status in TERMINAL:
            return state
        with self._spans.end(agent_id, status):
            return self._end(state, status, reason)
