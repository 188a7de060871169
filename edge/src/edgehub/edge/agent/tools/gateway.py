"""The execution gateway: the one path every tool call takes.

In order: the tool must exist; its arguments must be a JSON object valid against its schema; every
admission check must admit it (the policy engine, rate limits); a call already recorded for this
idempotency key is replayed or, when its outcome is unknown and the tool is not idempotent, refused;
the intent of a non-idempotent call is made durable; only then does the tool run, under its timeout
and inside every interceptor (circuit breakers). The deciding admission is recorded on the result
(``ToolResult.decision``), so the mind-log says which rule let each call run or refused it.
Every failure becomes a ``ToolResult`` with ``ok=False`` and an error kind the model can read: a bad
call never raises into the agent loop. The result is persisted by the loop's checkpoint, atomically
with the step.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from edgehub.protocol.v1 import agent_pb2
from edgehub.testing import failpoints

from ...jsontypes import JsonObject
from ...store.base import Intent
from .base import ToolContext, ToolOutput, ToolSpec
from .registry import ToolRegistry

S = agent_pb2


Effect = Literal["allow", "deny", "needs_approval"]


@dataclass(frozen=True, slots=True)
class Decision:
    """An admission check's verdict on a call."""

    effect: Effect
    reason: str
    rule: str = ""
    """Which rule decided (recorded in the mind-log)."""
    digest: str = ""
    """Digest of the policy that decided, when a policy did."""
    error: str = "denied"
    """Error kind the model sees when the call is refused (``denied``, ``rate_limited`` ...)."""
    approved_by: str = ""
    network: tuple[str, ...] = ()
    """Hosts the call may reach from its sandbox (a policy grant)."""
    policy_version: int = 0
    """The hub bundle's version of the policy that decided (0: the local file or the default)."""

    @property
    def allow(self) -> bool:
        return self.effect == "allow"

    def to_proto(self) -> agent_pb2.PolicyDecision:
        return S.PolicyDecision(
            effect=self.effect,
            rule=self.rule or "default",
            reason=self.reason,
            policy_digest=self.digest,
            approved_by=self.approved_by,
            network=list(self.network),
            policy_version=self.policy_version,
        )


class Admission(Protocol):
    """A check consulted before a call is recorded and run; None means "no opinion"."""

    async def admit(
        self, call: agent_pb2.ToolCall, spec: ToolSpec, args: JsonObject, ctx: ToolContext
    ) -> Decision | None: ...


Proceed = Callable[[], Awaitable[tuple[agent_pb2.ToolResult, "ToolOutput | None"]]]


class Interceptor(Protocol):
    """Wraps the run of an admitted call (e.g. a circuit breaker); must call ``proceed`` at most once."""

    async def intercept(
        self, spec: ToolSpec, ctx: ToolContext, proceed: Proceed
    ) -> tuple[agent_pb2.ToolResult, ToolOutput | None]: ...


class IntentLog(Protocol):
    def begin_intent(self, intent: Intent) -> None: ...

    def get_intent(self, key: str) -> Intent | None: ...


class ExecutionGateway:
    """Validates, admits, records and runs tool calls."""

    def __init__(
        self,
        registry: ToolRegistry,
        intents: IntentLog,
        *,
        observation_limit: int,
        admissions: Sequence[Admission] = (),
        interceptors: Sequence[Interceptor] = (),
    ) -> None:
        self.registry = registry
        self.intents = intents
        self.observation_limit = observation_limit
        self.admissions = list(admissions)
        self.interceptors = list(interceptors)

    async def execute(
        self, call: agent_pb2.ToolCall, ctx: ToolContext, *, proposal_json: str
    ) -> tuple[agent_pb2.ToolResult, ToolOutput | None]:
        started = time.perf_counter()
        result, output = await self._execute(call, ctx, proposal_json)
        result.idempotency_key = ctx.idempotency_key
        if not result.replayed:
            result.duration_ms = (time.perf_counter() - started) * 1000
        return result, output

    async def _execute(
        self, call: agent_pb2.ToolCall, ctx: ToolContext, proposal_json: str
    ) -> tuple[agent_pb2.ToolResult, ToolOutput | None]:
        tool = self.registry.get(call.tool)
        if tool is None:
            names = ", ".join(self.registry.names())
            return _error("unknown_tool", f"there is no tool {call.tool!r}; tools: {names}"), None
        args, problem = self._validate(call)
        if problem:
            return _error("invalid_args", problem), None
        decision = await self._admit(call, tool.spec, args, ctx)
        if decision is not None and not decision.allow:
            if decision.effect == "needs_approval":
                text = f"needs an operator's approval: {decision.reason} (rule {decision.rule})"
                refused = _error("needs_approval", text)
            else:
                refused = _error(decision.error, f"{decision.reason} (rule {decision.rule or 'default'})")
            refused.decision.CopyFrom(decision.to_proto())
            return refused, None
        if decision is not None and decision.network:
            ctx = dataclasses.replace(ctx, network=decision.network)
        result, output = await self._record_and_run(tool, call, args, ctx, proposal_json)
        if decision is not None and not result.replayed:
            result.decision.CopyFrom(decision.to_proto())
        return result, output

    async def _record_and_run(
        self, tool: Any, call: agent_pb2.ToolCall, args: JsonObject, ctx: ToolContext, proposal_json: str
    ) -> tuple[agent_pb2.ToolResult, ToolOutput | None]:
        previous = self.intents.get_intent(ctx.idempotency_key)
        if previous is not None and previous.result is not None:
            replay = S.ToolResult()
            replay.CopyFrom(previous.result)
            replay.replayed = True
            return replay, None
        if previous is not None and not tool.spec.idempotent:
            return _error(
                "interrupted",
                f"a previous attempt of this {call.tool} call was interrupted; its outcome is unknown and it "
                "was not repeated. Check its effect before trying again.",
            ), None
        if previous is None and not tool.spec.idempotent:
            # only a call that must not run twice pays for a durable intent (an fsync) before it runs;
            # an idempotent call interrupted by a crash is simply proposed and run again
            self.intents.begin_intent(
                Intent(
                    ctx.idempotency_key,
                    ctx.agent_id,
                    ctx.step,
                    call.tool,
                    call.args_json,
                    proposal_json,
                    None,
                )
            )
        failpoints.hit("after_intent", ctx.step)
        return await self._intercepted(tool, args, ctx)

    async def _intercepted(
        self, tool: Any, args: JsonObject, ctx: ToolContext
    ) -> tuple[agent_pb2.ToolResult, ToolOutput | None]:
        async def run() -> tuple[agent_pb2.ToolResult, ToolOutput | None]:
            return await self._run(tool, tool.spec, args, ctx)

        proceed: Proceed = run
        for interceptor in reversed(self.interceptors):
            proceed = _wrap(interceptor, tool.spec, ctx, proceed)
        return await proceed()

    def _validate(self, call: agent_pb2.ToolCall) -> tuple[JsonObject, str]:
        try:
            args = json.loads(call.args_json or "{}")
        except json.JSONDecodeError as exc:
            return {}, f"arguments are not valid JSON: {exc}"
        if not isinstance(args, dict):
            return {}, "arguments must be a JSON object"
        validator = self.registry.validator(call.tool)
        if validator.is_valid(args):  # the common case; collecting errors is the slow path
            return args, ""
        errors = sorted(validator.iter_errors(args), key=lambda e: list(e.path))
        if errors:
            where = "/".join(str(p) for p in errors[0].absolute_path) or "(arguments)"
            return args, f"{where}: {errors[0].message}"
        return args, ""

    async def _admit(
        self, call: agent_pb2.ToolCall, spec: ToolSpec, args: JsonObject, ctx: ToolContext
    ) -> Decision | None:
        """The first refusal, else the first allow (the policy's, which the mind-log records)."""
        allowed: Decision | None = None
        for admission in self.admissions:
            decision = await admission.admit(call, spec, args, ctx)
            if decision is None:
                continue
            if not decision.allow:
                return decision
            allowed = allowed or decision
        return allowed

    async def _run(
        self, tool: Any, spec: ToolSpec, args: JsonObject, ctx: ToolContext
    ) -> tuple[agent_pb2.ToolResult, ToolOutput | None]:
        try:
            async with asyncio.timeout(spec.timeout_s):
                output: ToolOutput = await tool(args, ctx)
        except TimeoutError:
            return _error("timeout", f"{spec.name} did not finish within {spec.timeout_s:g} s"), None
        except Exception as exc:  # a tool's bug is the model's observation, not the daemon's crash
            return _error("tool_error", f"{spec.name} failed: {exc.__class__.__name__}: {exc}"), None
        result = S.ToolResult(ok=output.ok, output=self._clip(output.output), error=output.error)
        return result, output

    def _clip(self, text: str) -> str:
        if len(text) <= self.observation_limit:
            return text
        cut = len(text) - self.observation_limit
        return text[: self.observation_limit] + f"… [{cut} more characters truncated]"


def _wrap(interceptor: Interceptor, spec: ToolSpec, ctx: ToolContext, inner: Proceed) -> Proceed:
    async def proceed() -> tuple[agent_pb2.ToolResult, ToolOutput | None]:
        return await interceptor.intercept(spec, ctx, inner)

    return proceed


def _error(kind: str, message: str) -> agent_pb2.ToolResult:
    return S.ToolResult(ok=False, error=kind, output=message)
