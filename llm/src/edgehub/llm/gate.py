"""Async access to a blocking brain: one call at a time, off the event loop.

A llama.cpp context is single-threaded state (its KV cache is the reused prompt prefix), so every user
of one brain (the agents on a device, the hub's jobs) shares it through this gate, which serialises
calls with an asyncio lock and runs them in a worker thread so the daemon keeps serving while the
model decodes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from .base import Brain, Completion

T = TypeVar("T")


class ModelGate:
    def __init__(self, brain: Brain) -> None:
        self.brain = brain
        self._lock = asyncio.Lock()

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` (which may use the brain) holding the model exclusively."""
        async with self._lock:
            return await asyncio.to_thread(fn)

    async def complete(
        self,
        prompt: str,
        *,
        json_schema: dict[str, Any] | None = None,
        max_tokens: int = 256,
        special: bool = False,
    ) -> Completion:
        return await self.call(
            lambda: self.brain.complete(
                prompt, json_schema=json_schema, max_tokens=max_tokens, special=special
            )
        )
