"""What the agent loop needs from the layers around it, as protocols the loop owns: the safety layer
implements them (``safety/stuck.py`` is the step monitor), and the loop never imports it."""

from __future__ import annotations

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


class StepMonitor(Protocol):
    """Watches each committed step of an agent (the stuck-loop monitor)."""

    def observe(self, guard: agent_pb2.Guard, thought: str, call: str, failed: bool) -> StepVerdict:
        """Judge a step: its thought, its call (tool and arguments) and whether the call failed."""
        ...
