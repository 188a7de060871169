"""The hub's one copy of its model: loaded at first use, shared behind one ``ModelGate`` by every part
that writes with it in this process (planning and synthesis in ``goals/work.py``, the edges'
escalations in ``escalation/service.py``), so the model is in memory once and one call runs at a time.

Consolidation (``[dreamer]``) keeps its own model: it runs on its own schedule, in its own thread.
"""

from __future__ import annotations

import asyncio
import contextlib

from edgehub.llm import Brain, ModelGate

from .config import HubModelConfig


class HubModel:
    """The model ``cfg`` names, or ``brain`` (tests of logic; the caller's, never closed here)."""

    def __init__(self, cfg: HubModelConfig, *, brain: Brain | None = None, section: str = "planner") -> None:
        self.cfg = cfg
        self.section = section
        self._owned = brain is None
        self._gate: ModelGate | None = ModelGate(brain) if brain is not None else None
        self._loading = asyncio.Lock()

    async def gate(self) -> ModelGate:
        """The gate of the loaded model (loaded now, once, if it is not yet)."""
        async with self._loading:
            if self._gate is None:
                self._gate = ModelGate(await asyncio.to_thread(self._load))
        return self._gate

    @property
    def loaded(self) -> Brain | None:
        """The model if it is loaded, else None (nothing is loaded by asking)."""
        return self._gate.brain if self._gate is not None else None

    def _load(self) -> Brain:
        from edgehub.llm.llama import (
            LlamaBrain,  # here: a hub that never uses its model never loads llama.cpp
        )

        return LlamaBrain.open(self.cfg.llama_settings(self.section))

    def close(self) -> None:
        """Close the model this object loaded (idempotent)."""
        if self._gate is not None and self._owned:
            with contextlib.suppress(Exception):
                self._gate.brain.close()
            self._gate = None
