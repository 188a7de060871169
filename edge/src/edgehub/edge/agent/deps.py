"""Everything a running agent uses, built once per daemon (``LoopDeps``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgehub.llm import ModelGate
from edgehub.protocol.v1 import agent_pb2

from ..config import AgentConfig
from ..memory.compaction import Compactor
from ..store.base import EdgeStore
from .base import StepMonitor
from .escalation import Escalation
from .shadow import ShadowSink
from .tools.base import CommandRunner, Knowledge, Recall
from .tools.gateway import ExecutionGateway
from .tools.registry import ToolRegistry

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

CountFn = Callable[[str], int]


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
    """Told about every committed mind-log event: steps, ends, approval waits (metrics, L3)."""
    tracer: Tracer | None = None
    """Spans of runs, steps and phases (``..tracing``); None or the API's no-op tracer: none, at no cost."""
    memory: Recall | None = None
    """L3 episodic memory for the remember/recall tools (None: off)."""
    knowledge: Knowledge | None = None
    """The hub's L4 knowledge graph for the knowledge tool (None: no hub)."""
    escalation: Escalation | None = None
    """Asks the hub's model for the steps this device's model is unsure of (None: off, or no hub)."""
    shadow: ShadowSink | None = None
    """Takes each thought-out step for the model run in shadow (None: no rollout shadows here)."""
