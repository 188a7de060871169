"""What a step leaves behind: its mind-log event, the agent's new state, the L2 turns and the intent's
result, committed in one transaction (``EdgeStore.checkpoint``); and the agent's end, or its wait for an
operator's approval.

Before a step is committed the stuck-loop monitor judges it (a warning for the next prompt, or a stop)
and the steering records the agent's plan and decides whether its ``finish`` may end it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from edgehub.llm import Completion
from edgehub.protocol.v1 import agent_pb2

from ..store.base import Approval
from ..tracing import AgentSpans
from .actions import Proposal
from .base import SeenStep
from .deps import LoopDeps
from .escalation import Escalated
from .steering import Steering
from .stops import WARNING
from .window import Window

S = agent_pb2
EVENT_SCHEMA_VERSION = 1
RAN_ERRORS = frozenset({"timeout", "tool_error"})
"""Errors of a tool that ran (and may have had its effect) before it failed."""


def call_key(proposal: Proposal) -> str:
    """A call as the stuck monitor counts it: the tool and its arguments as canonical JSON."""
    return f"{proposal.tool} {proposal.args_json()}"


def ran(result: agent_pb2.ToolResult, output: Any) -> bool:
    """The gateway ran the tool (or replayed its recorded run), as opposed to refusing the call."""
    return output is not None or result.replayed or result.error in RAN_ERRORS


def event_id(state: agent_pb2.AgentState, kind: str) -> str:
    return f"{state.agent_id}/{state.epoch}/{state.step}/{kind}"


def step_event(
    state: agent_pb2.AgentState, kind: agent_pb2.StepKind.ValueType, name: str, device_id: str
) -> agent_pb2.StepEvent:
    """A mind-log event of ``state``'s current step, stamped now."""
    event = S.StepEvent(
        schema_version=EVENT_SCHEMA_VERSION,
        event_id=event_id(state, name),
        agent_id=state.agent_id,
        device_id=device_id,
        epoch=state.epoch,
        step=state.step,
        kind=kind,
        status=state.status,
    )
    event.at.GetCurrentTime()
    return event


class Journal:
    """Commits steps, ends and approval waits (see the module docstring). ``render`` turns L2 turns
    into the prompt's text (the window grows by what a step committed)."""

    def __init__(
        self,
        deps: LoopDeps,
        steer: Steering,
        spans: AgentSpans,
        render: Callable[[list[agent_pb2.Turn]], str],
    ) -> None:
        self.d = deps
        self.steer = steer
        self._spans = spans
        self._render = render

    def event(
        self, state: agent_pb2.AgentState, kind: agent_pb2.StepKind.ValueType, name: str
    ) -> agent_pb2.StepEvent:
        return step_event(state, kind, name, self.d.device_id)

    def checkpoint(
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
        if self.d.on_step is not None:
            self.d.on_step(event)

    def commit(
        self,
        state: agent_pb2.AgentState,
        proposal: Proposal,
        completion: Completion | None,
        result: agent_pb2.ToolResult,
        output: Any,
        timing: tuple[float, float],
        window: Window,
        escalated: Escalated | None = None,
    ) -> agent_pb2.AgentState:
        """The step's new state, committed; ``timing``: (when the step started, its tool's ms);
        ``window`` (loaded before the commit, which would put this step's turns in it) grows by them;
        ``escalated``: what asking the hub's model did (its note leads the event's detail)."""
        started, tool_ms = timing
        event = self.event(state, S.STEP_KIND_ACTION, "action")
        event.thought = proposal.thought
        if proposal.ok:
            event.action.CopyFrom(S.ToolCall(tool=proposal.tool, args_json=proposal.args_json()))
            event.action.idempotency_key = result.idempotency_key
        event.observation.CopyFrom(result)
        new = S.AgentState()
        new.CopyFrom(state)
        self._count(new, event, proposal, completion, result)
        self.steer.take_plan(new, event, proposal)
        if output is not None and output.finish and result.ok:
            self.steer.finish_or_return(new, event, result)
        if new.status != S.AGENT_STATUS_FINISHED:
            self._guard(new, event, proposal, result, output)
        else:
            new.guard.ClearField("calls")  # an ended agent repeats nothing: the counts would only take space
        if escalated is not None:
            new.usage.escalated_tokens += escalated.tokens
            event.detail = "; ".join(x for x in (escalated.note, event.detail) if x)
        new.step += 1
        turns = self._turns(state.step, proposal, result, completion)
        turns += self.steer.plan_turns(state.step, new, proposal, result)
        event.status = new.status
        event.timings.tool_ms = tool_ms
        new.usage.wall_seconds += time.perf_counter() - started
        event.timings.total_ms = (time.perf_counter() - started) * 1000
        new.updated_at.GetCurrentTime()
        self.checkpoint(new, event, turns, result)
        text = self._render(turns)
        window.extend(turns, text, self.d.count_tokens(text))
        return new

    @staticmethod
    def _count(
        new: agent_pb2.AgentState,
        event: agent_pb2.StepEvent,
        proposal: Proposal,
        completion: Completion | None,
        result: agent_pb2.ToolResult,
    ) -> None:
        """The step's usage, on the agent and its event."""
        u = new.usage
        u.steps += 1
        u.tool_calls += int(proposal.ok and result.error not in ("unknown_tool", "invalid_args"))
        if completion is None:
            return
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

    def _guard(
        self,
        new: agent_pb2.AgentState,
        event: agent_pb2.StepEvent,
        proposal: Proposal,
        result: agent_pb2.ToolResult,
        output: Any,
    ) -> None:
        """Let the stuck-loop monitor judge this step; it may warn (prompt, and a tool withheld from the
        next step's grammar) or stop (FAILED) the agent."""
        if self.d.monitor is None:
            return
        call = call_key(proposal) if proposal.ok else f"invalid action: {proposal.error[:60]}"
        seen = SeenStep(
            thought=proposal.thought,
            call=call,
            failed=not result.ok,
            number=new.step,
            tool=proposal.tool if proposal.ok else "",
            ran=proposal.ok and ran(result, output),
            refused=result.error in ("repeated", "withheld"),
            output=result.output,
        )
        verdict = self.d.monitor.observe(new.guard, seen)
        new.guard.CopyFrom(verdict.guard)
        if verdict.action == "warn":
            event.detail = f"{WARNING}{verdict.reason}; the agent was told to re-plan"
            if new.guard.excluded_tool:
                event.detail += f"; {new.guard.excluded_tool} is withheld from its next step"
        elif verdict.action == "stop":
            new.status, new.failure_reason = S.AGENT_STATUS_FAILED, verdict.reason
            event.detail = verdict.reason

    def _turns(
        self, step: int, proposal: Proposal, result: agent_pb2.ToolResult, completion: Completion | None
    ) -> list[agent_pb2.Turn]:
        observation = result.output if result.ok else f"error ({result.error}): {result.output}"
        # the model already counted what it generated (unless the hub's action replaced it); only the
        # observation needs the tokenizer
        own = completion is not None and completion.text == proposal.raw
        action_tokens = (
            completion.completion_tokens if completion and own else self.d.count_tokens(proposal.raw)
        )
        return [
            S.Turn(step=step, role="action", text=proposal.raw, tokens=action_tokens),
            S.Turn(step=step, role="observation", text=observation, tokens=self.d.count_tokens(observation)),
        ]

    def end(
        self, state: agent_pb2.AgentState, status: agent_pb2.AgentStatus.ValueType, reason: str
    ) -> agent_pb2.AgentState:
        """``state`` ended with ``status`` and the reason, committed."""
        new = S.AgentState()
        new.CopyFrom(state)
        new.status, new.failure_reason = status, reason
        new.guard.ClearField("calls")  # as for a finished agent: kept for ever, used never
        new.updated_at.GetCurrentTime()
        event = self.event(new, S.STEP_KIND_END, "end")
        event.detail = reason
        self.checkpoint(new, event, [])
        return new

    def note(self, state: agent_pb2.AgentState, detail: str, name: str = "paused") -> None:
        """A warning in ``state``'s mind-log (the state itself unchanged): why it stood still, or what
        changed under it (the model)."""
        event = self.event(state, S.STEP_KIND_WARNING, f"{name}-{time.time_ns()}")
        event.detail = detail
        self.checkpoint(state, event, [])

    def await_approval(
        self,
        state: agent_pb2.AgentState,
        proposal: Proposal,
        result: agent_pb2.ToolResult,
        completion: Completion | None,
        escalated: Escalated | None = None,
    ) -> agent_pb2.AgentState:
        """Checkpoint the agent as AWAITING_APPROVAL with its proposal; the step is not consumed."""
        new = S.AgentState()
        new.CopyFrom(state)
        new.status = S.AGENT_STATUS_AWAITING_APPROVAL
        if completion is not None:  # the model's work for this step is spent even though it waits
            new.usage.evaluated_tokens += completion.evaluated_tokens
            new.usage.completion_tokens += completion.completion_tokens
        if escalated is not None:
            new.usage.escalated_tokens += escalated.tokens
        new.updated_at.GetCurrentTime()
        event = self.event(new, S.STEP_KIND_APPROVAL_REQUESTED, "approval")
        event.thought = proposal.thought
        event.action.CopyFrom(S.ToolCall(tool=proposal.tool, args_json=proposal.args_json()))
        event.observation.CopyFrom(result)
        event.detail = "; ".join(x for x in (escalated.note if escalated else "", result.output) if x)
        approval = Approval(
            key=result.idempotency_key,
            agent_id=state.agent_id,
            step=state.step,
            tool=proposal.tool,
            args_json=proposal.args_json(),
            proposal_json=proposal.to_json(),
            rule=result.decision.rule,
            reason=result.decision.reason,
            policy_version=result.decision.policy_version,
            policy_digest=result.decision.policy_digest,
        )
        self.checkpoint(new, event, [], approval=approval)
        return new
