"""Per-tool rate limits (aiolimiter) and circuit breakers (pybreaker).

Both are libraries made for exactly this: aiolimiter's leaky bucket is asyncio-native and has a
non-blocking ``has_capacity``; pybreaker is the long-maintained implementation of Nygard's breaker
(closed -> open after ``fail_max`` consecutive failures -> half-open after ``reset_timeout`` -> closed
on a success). A refused call costs the agent a step with a clear observation; it never runs the tool.
The limits are the device's (shared by every agent), because they protect the device and what the
tools talk to.
"""

from __future__ import annotations

import pybreaker
from aiolimiter import AsyncLimiter

from edgehub.protocol.v1 import agent_pb2

from ..agent.tools.base import ToolContext, ToolOutput, ToolSpec
from ..agent.tools.gateway import Decision, Proceed
from ..jsontypes import JsonObject

S = agent_pb2

BREAKER_ERRORS = frozenset({"tool_error", "timeout", "unavailable"})
"""Error kinds that count as the tool failing (not the model's mistake, like a non-zero exit)."""


class RateLimits:
    """Admission check: at most ``per_minute`` calls of each tool per minute on this device."""

    def __init__(self, per_minute: dict[str, float], default_per_minute: float | None) -> None:
        self.per_minute = per_minute
        self.default = default_per_minute
        self._limiters: dict[str, AsyncLimiter | None] = {}

    def _limiter(self, tool: str) -> AsyncLimiter | None:
        if tool not in self._limiters:
            rate = self.per_minute.get(tool, self.default)
            # burst = the per-minute rate, refilled continuously (leaky bucket)
            self._limiters[tool] = AsyncLimiter(rate, 60) if rate else None
        return self._limiters[tool]

    async def admit(
        self, call: agent_pb2.ToolCall, spec: ToolSpec, args: JsonObject, ctx: ToolContext
    ) -> Decision | None:
        limiter = self._limiter(spec.name)
        if limiter is None:
            return None
        if not limiter.has_capacity():
            rate = limiter.max_rate
            return Decision(
                "deny",
                f"{spec.name} is limited to {rate:g} calls per minute",
                "rate-limit",
                error="rate_limited",
            )
        await limiter.acquire()  # has capacity: returns at once
        return None


class _Failed(Exception):
    def __init__(self, outcome: tuple[agent_pb2.ToolResult, ToolOutput | None]) -> None:
        self.outcome = outcome


class Breakers:
    """Interceptor: one circuit breaker per tool."""

    def __init__(self, fail_max: int, reset_timeout_s: float) -> None:
        self.fail_max = fail_max
        self.reset_timeout_s = reset_timeout_s
        self._breakers: dict[str, pybreaker.CircuitBreaker] = {}

    def breaker(self, tool: str) -> pybreaker.CircuitBreaker:
        if tool not in self._breakers:
            self._breakers[tool] = pybreaker.CircuitBreaker(
                fail_max=self.fail_max,
                reset_timeout=self.reset_timeout_s,
                name=tool,
                throw_new_error_on_trip=False,
            )
        return self._breakers[tool]

    async def intercept(
        self, spec: ToolSpec, ctx: ToolContext, proceed: Proceed
    ) -> tuple[agent_pb2.ToolResult, ToolOutput | None]:
        breaker = self.breaker(spec.name)
        try:
            with breaker.calling():
                outcome = await proceed()
                if not outcome[0].ok and outcome[0].error in BREAKER_ERRORS:
                    raise _Failed(outcome)
                return outcome
        except _Failed as failed:
            return failed.outcome
        except pybreaker.CircuitBreakerError:
            text = (
                f"{spec.name} is failing repeatedly ({self.fail_max} failures in a row); the circuit is open "
                f"for {self.reset_timeout_s:g} s. Try something else."
            )
            return S.ToolResult(ok=False, error="circuit_open", output=text), None
