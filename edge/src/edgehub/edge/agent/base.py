"""What the agent loop needs from the layers around it, as protocols the loop owns: the safety layer
implements them (``safety/stuck.py`` is the step monitor), and the loop never imports it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from edgehub.protocol.v1 import agent_pb2


@dataclass(frozen=True, slots=True)
class StepVerdict:
    """A step monitor's judgement of one step."""

    action: Literal["ok", "warn", "stop"]
    """``warn``: the reason goes into the agent's next prompt; ``stop``: the agent ends FAILED."""
    reason: str
    guard: agent_pb2.Guard
    """The agent's guard after this step (checkpointed with it, so a restart does not reset it)."""


@dataclass(frozen=True, slots=True)
class SeenStep:
    """One committed step as a step monitor sees it."""

    thought: str
    call: str
    """``tool {arguments as canonical JSON}``, or ``invalid action: ...`` when the output was none."""
    failed: bool
    number: int = 0
    """The step's number (from 0)."""
    tool: str = ""
    ran: bool = False
    """The tool ran (or its recorded run was replayed): its side effect, if any, happened."""
    refused: bool = False
    """The monitor refused the call (``StepMonitor.refusal``: a repeat, or its tool withheld): it did
    not run."""
    output: str = ""
    """What the call returned (kept, shortened, for the refusal of a repeat)."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a call is not run (a ``ToolResult`` error kind and the observation's text)."""

    error: Literal["repeated", "withheld"]
    reason: str


class StepMonitor(Protocol):
    """Watches each committed step of an agent (the stuck-loop monitor)."""

    def observe(self, guard: agent_pb2.Guard, step: SeenStep) -> StepVerdict:
        """Judge a step: its thought, its call (tool and arguments), whether the call ran and failed."""
        ...

    def refusal(
        self, guard: agent_pb2.Guard, tool: str, call: str, *, repeatable: bool, thought: str
    ) -> Refusal | None:
        """Why ``call`` must not run now (a repeat of a call that is not repeatable and already ran,
        with no reason given in ``thought``; a tool withheld this step); None: it may."""
        ...


@dataclass(frozen=True, slots=True)
class HubAnswer:
    """The hub model's answer to an escalated step."""

    text: str
    """Its completion (the action's JSON)."""
    tokens: int
    """Tokens the hub's model spent on it (prompt + completion; 0 when it came from a cache)."""
    model: str
    """Fingerprint of the hub's model that wrote it."""
    source: Literal["hub", "hub cache", "device cache"]
    latency_ms: float


class Escalator(Protocol):
    """Asks the hub's model for a step (the uplink's ``EscalationClient``)."""

    async def ask(
        self,
        *,
        agent_id: str,
        step: int,
        reason: str,
        prompt: str,
        schema: Mapping[str, object] | None,
        max_tokens: int,
        confidence: float | None,
    ) -> HubAnswer | str:
        """The hub's answer, or why there is none ("timeout", "no hub connection", the hub's error);
        never waits longer than its timeout, never raises for the network."""
        ...
