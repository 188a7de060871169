"""A scripted brain for unit tests of logic (and for benchmarks that exclude decoding by design).

Never used by a daemon: it only lives here so tests and benchmarks share one implementation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from .base import Completion
from .chat import ChatFormat


class FakeBrain:
    """Returns scripted completions in order (or from a function of the prompt); records prompts."""

    def __init__(
        self,
        script: Sequence[str] | Callable[[str], str],
        *,
        n_ctx: int = 4096,
        count: Callable[[str], int] | None = None,
        chat_format: ChatFormat | None = None,
        confidence: Callable[[str], float | None] | None = None,
    ) -> None:
        self._script = script if callable(script) else list(script)
        self._n_ctx = n_ctx
        self._count = count or (lambda text: len(text.split()))
        self.prompts: list[str] = []
        self.schemas: list[dict[str, Any] | None] = []
        self.specials: list[bool] = []
        self._chat = chat_format
        self._confidence = confidence
        """The confidence of a completion, from its text (None: not measured, like most brains)."""
        self._previous = ""
        self._previous_tokens = 0

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    @property
    def fingerprint(self) -> str:
        return "fake"

    @property
    def chat_format(self) -> ChatFormat | None:
        return self._chat

    def count_tokens(self, text: str) -> int:
        return self._count(text)

    def complete(
        self,
        prompt: str,
        *,
        json_schema: dict[str, Any] | None = None,
        max_tokens: int = 256,
        stop: list[str] | None = None,
        special: bool = False,
    ) -> Completion:
        started = time.perf_counter()
        self.prompts.append(prompt)
        self.schemas.append(json_schema)
        self.specials.append(special)
        if callable(self._script):
            text = self._script(prompt)
        elif self._script:
            text = self._script.pop(0)
        else:
            raise RuntimeError("FakeBrain script exhausted")
        # like the real brain: only the text after the reused prefix is tokenized and "evaluated"
        reused = self._previous and prompt.startswith(self._previous)
        evaluated = self._count(prompt[len(self._previous) :] if reused else prompt)
        total = (self._previous_tokens if reused else 0) + evaluated
        completion = self._count(text)
        self._previous, self._previous_tokens = prompt + text, total + completion
        return Completion(
            text=text,
            prompt_tokens=total,
            evaluated_tokens=evaluated,
            completion_tokens=completion,
            eval_ms=0.0,
            decode_ms=(time.perf_counter() - started) * 1000,
            stop_reason="stop",
            confidence=self._confidence(text) if self._confidence is not None else None,
        )

    def close(self) -> None:
        self._script = []
