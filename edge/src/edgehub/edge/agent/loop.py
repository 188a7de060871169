"""The ReAct loop: think (model) -> decide (gateway) -> act (tool) -> observe -> checkpoint.

One step, in order:
1. budgets are checked; an exhausted budget ends the agent with the reason;
2. a pending intent for this step (crash in a previous life) supplies the proposal, so the model is
   not asked again and a non-idempotent call is never repeated; otherwise the L1 window is compacted
   if it must be and the model proposes a grammar-constrained action;
3. the execution gateway runs it (or turns it into an error observation);
4. state + mind-log event + turns + intent result + outbox entry commit in one transaction;
5. the stuck-loop monitor updates the agent's guard: a warning goes into the next prompt (and a repeated
   call's tool out of the next step's grammar), a stop ends it.

Before a call reaches the gateway, the monitor may refuse it: a repeat of a call that already ran and
whose tool is not repeatable (``ToolSpec.repeatable``) gets the first run's result as its observation
and never runs again, unless the thought gives a reason.

A call that policy marks needs-approval does not end the step: the agent is checkpointed as
AWAITING_APPROVAL with the proposal, and the step resumes from that proposal once an operator decided.

What the model sees (the L1 window, the prompt, recall, compaction) is ``context.py``; what a step
commits (its event, the new state, the turns, the monitor's verdict) is ``journal.py``.

After a step it thought for is committed, the call and the proposal go to the shadow model when one
runs (``LoopDeps.shadow``, a parity-gated rollout): handed over, never waited for.

Runs, steps and their phases are traced (``..tracing``) when the daemon gives the loop a tracer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from edgehub.llm import Completion
from edgehub.protocol.v1 import agent_pb2
from edgehub.testing import failpoints

from ..errors import GoalError
from ..tracing import AgentSpans
from .actions import Proposal, parse_action
from .base import Refusal
from .context import AgentContext
from .deliverables import extract
from .deps import LoopDeps
from .escalation import Escalated, Thought
from .journal import Journal, call_key
from .prompt import PromptBuilder
from .shadow import ModelCall, ShadowAsk
from .steering import Steering, copied_command, granted, may_call
from .stops import BUDGET_EXHAUSTED
from .tools.base import ToolContext

if TYPE_CHECKING:
    pass

S = agent_pb2
log = logging.getLogger("edgehub.edge.agent")
STATE_SCHEMA_VERSION = 1
TERMINAL = (S.AGENT_STATUS_FINISHED, S.AGENT_STATUS_FAILED, S.AGENT_STATUS_STOPPED)


def new_agent(
    agent_id: str,
    goal: str,
    budget: agent_pb2.Budget | None = None,
    task_id: str = "",
    tools: list[str] | None = None,
) -> agent_pb2.AgentState:
    """A PENDING agent ready to be created in the store; ``task_id``: a hub-planned task, whose result
    the store reports when the agent ends; ``tools``: the only tools it may call besides ``finish``
    (None: every tool the device has)."""
    state = S.AgentState(
        schema_version=STATE_SCHEMA_VERSION,
        agent_id=agent_id,
        goal=goal,
        status=S.AGENT_STATUS_PENDING,
        task_id=task_id,
    )
    if budget is not None:
        state.budget.CopyFrom(budget)
    if tools is not None:
        state.tools.SetInParent()
        state.tools.names.extend(tools)
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
        self._spans = AgentSpans(deps.tracer)
        self.journal = Journal(deps, self.steer, self._spans, self.prompts.turns)
        self.context = AgentContext(deps, self.prompts, self.steer, self._spans, self.journal)
        self._workspaces: set[str] = set()
        self._model = deps.model.brain.fingerprint

    async def run(self, agent_id: str, stop: asyncio.Event) -> agent_pb2.AgentState:
        state = self.d.store.load_agent(agent_id)
        with self._spans.run(state, self.d.device_id) as span:
            fresh = state.status == S.AGENT_STATUS_PENDING and state.step == 0
            if fresh and (too_big := self.context.goal_problem(state)) is not None:
                state = self._end(state, S.AGENT_STATUS_FAILED, str(too_big))  # before any step (goal.py)
            if state.status == S.AGENT_STATUS_PENDING:
                state.status = S.AGENT_STATUS_RUNNING
                if state.step == 0 and granted(state) != frozenset():  # granted no tool: its goal is all
                    state.recalled[:] = await self.context.recall(state, state.goal)
                    state.deliverables.extend(extract(state.goal))
                self.d.store.update_agent(state)
            while state.status == S.AGENT_STATUS_RUNNING and not stop.is_set():
                state = await self.step(state)
            self._spans.run_ended(span, state)
        return state

    def goal_problem(self, state: agent_pb2.AgentState) -> GoalError | None:
        """Why ``state``'s goal does not fit this model's context, or None (``AgentContext.goal_problem``)."""
        return self.context.goal_problem(state)

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
        escalated: Escalated | None = None
        call: ModelCall | None = None
        own: Proposal | None = None
        replay = self._replayed_proposal(key)
        if replay is not None:
            proposal = replay
        else:
            state = await self.context.compact_if_needed(state)
            completion, call = await self.context.think(state)
            own = parse_action(completion.text)
            proposal = own
            thought = Thought(call.prompt, call.json_schema or {}, completion)
            escalated = await self._escalate(state, thought, proposal)
            if escalated is not None:
                proposal = escalated.proposal
        tool_started = time.perf_counter()
        with self._spans.phase("act") as span:
            result, output = await self._act(state, proposal, key)
            self._spans.acted(span, result)
        tool_ms = (time.perf_counter() - tool_started) * 1000
        if result.error == "needs_approval":
            return self.journal.await_approval(state, proposal, result, completion, escalated)
        failpoints.hit("after_tool", state.step)
        window = self.context.window(
            state
        )  # before the commit: loading it after would hold this step's turns
        new = self.journal.commit(
            state, proposal, completion, result, output, (started, tool_ms), window, escalated
        )
        failpoints.hit("after_checkpoint", state.step)
        if call is not None and own is not None and self.d.shadow is not None:
            # after the commit: it cannot change the step; the running model's own action, even when
            # the hub's model chose the step's (escalation)
            self.d.shadow.offer(ShadowAsk(state.agent_id, state.epoch, state.step, call, own, self._model))
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

    async def _escalate(
        self, state: agent_pb2.AgentState, thought: Thought, proposal: Proposal
    ) -> Escalated | None:
        """Ask the hub's model for this step when it must be (``escalation.py``)."""
        if self.d.escalation is None:
            return None
        reason = self.d.escalation.reason(state, thought, proposal)
        if reason is None:
            return None
        budget = self._limit(state.budget.max_tokens, self.d.cfg.max_tokens)
        with self._spans.phase("escalate") as span:
            done = await self.d.escalation.step(state, thought, proposal, budget, reason)
            self._spans.escalated(span, done.reason, done.outcome, done.note)
        return done

    # budgets ---------------------------------------------------------------------------------------
    def _limit(self, value: float, configured: float) -> float:
        return value if value > 0 else configured

    def _exhausted(self, state: agent_pb2.AgentState) -> str:
        b, u, c = state.budget, state.usage, self.d.cfg
        tokens = u.evaluated_tokens + u.completion_tokens + u.escalated_tokens
        checks = [
            (u.steps, self._limit(b.max_steps, c.max_steps), "step"),
            (tokens, self._limit(b.max_tokens, c.max_tokens), "token"),
            (u.tool_calls, self._limit(b.max_tool_calls, c.max_tool_calls), "tool-call"),
            (u.wall_seconds, self._limit(b.max_wall_seconds, c.max_wall_seconds), "wall-time"),
        ]
        for used, limit, what in checks:
            if used >= limit:
                return f"{what} {BUDGET_EXHAUSTED} ({used:g} of {limit:g}) before finishing"
        return ""

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
        if not may_call(state, proposal.tool):
            names = ", ".join(sorted(granted(state) or ())) or "none: answer with finish"
            refused = f"{proposal.tool} is not granted to this task (its tools: {names})"
            return S.ToolResult(idempotency_key=key, ok=False, error="not_granted", output=refused), None
        refusal = self._refusal(state, proposal)
        if refusal is not None:
            return S.ToolResult(
                idempotency_key=key, ok=False, error=refusal.error, output=refusal.reason
            ), None
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

    def _refusal(self, state: agent_pb2.AgentState, proposal: Proposal) -> Refusal | None:
        """The stuck monitor's refusal of this call: a repeat of a call that already ran and is not
        repeatable, or a tool withheld this step."""
        tool = self.d.registry.get(proposal.tool)
        if self.d.monitor is None or tool is None:
            return None  # an unknown tool is the gateway's error
        return self.d.monitor.refusal(
            state.guard,
            proposal.tool,
            call_key(proposal),
            repeatable=tool.spec.repeatable,
            thought=proposal.thought,
        )

    # end -------------------------------------------------------------------------------------------
    def _end(
        self, state: agent_pb2.AgentState, status: agent_pb2.AgentStatus.ValueType, reason: str
    ) -> agent_pb2.AgentState:
        new = self.journal.end(state, status, reason)
        self.context.forget(state.agent_id)
        return new

    def note_pause(self, agent_id: str, reason: str, seconds: float) -> None:
        """Write into a resuming agent's mind-log that it was paused ``seconds`` for ``reason`` (a
        full disk): its trace says why it stood still."""
        self.note(agent_id, f"paused {seconds:.0f} s: {reason}; resumed from the last checkpoint", "paused")

    def note(self, agent_id: str, detail: str, name: str) -> None:
        """Write ``detail`` into a non-terminal agent's mind-log between its steps (a pause, the model
        it runs on changed); ``name`` tells the event's id apart."""
        state = self.d.store.load_agent(agent_id)
        if state.status in TERMINAL:
            return
        self.journal.note(state, detail, name)

    def active(self) -> list[str]:
        """The agents that are not ended nor gone (running, paused, waiting for an approval)."""
        gone = (*TERMINAL, S.AGENT_STATUS_MIGRATED)
        return [s.agent_id for s in self.d.store.list_agents() if s.status not in gone]

    def end(
        self, agent_id: str, status: agent_pb2.AgentStatus.ValueType, reason: str
    ) -> agent_pb2.AgentState:
        """End a non-terminal agent with ``status`` (FAILED or STOPPED) and the reason, checkpointed."""
        state = self.d.store.load_agent(agent_id)
        if state.status in TERMINAL:
            return state
        with self._spans.end(agent_id, status):
            return self._end(state, status, reason)
