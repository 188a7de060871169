"""The brain interface: a local language model that completes prompts, optionally under a grammar."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .chat import ChatFormat


@dataclass(frozen=True, slots=True)
class Completion:
    """Result of one model call."""

    text: str
    """Generated text (for a grammar-constrained call, the JSON document)."""
    prompt_tokens: int
    """Tokens in the whole prompt."""
    evaluated_tokens: int
    """Prompt tokens actually evaluated; the rest were reused from the cached prefix."""
    completion_tokens: int
    """Tokens generated."""
    eval_ms: float
    """Wall time spent evaluating the prompt."""
    decode_ms: float
    """Wall time spent generating."""
    stop_reason: str
    """"stop" (end of text or grammar complete) or "length" (hit max_tokens)."""
    confidence: float | None = None
    """How sure the model was of the action it chose (0..1): the probability it gave, before the
    grammar's mask, to the first token of the ``"tool"`` value that spells part of the name
    (``confidence.ToolConfidence``); None when not measured (no ``"tool"`` value, or a brain that does
    not measure it)."""


class Brain(Protocol):
    """A local model. Implementations are not thread-safe: one call at a time."""

    @property
    def n_ctx(self) -> int:
        """Context window in tokens."""
        ...

    @property
    def fingerprint(self) -> str:
        """Stable identity of the loaded model (file hash prefix + key parameters)."""
        ...

    @property
    def chat_format(self) -> ChatFormat | None:
        """The model's own chat template, cut for append-only prompts (``chat.ChatFormat``); None for a
        base model whose GGUF has no template (or one that cannot be used)."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` occupies in a prompt (without BOS, special-token text counted as text)."""
        ...

    def complete(
        self,
        prompt: str,
        *,
        json_schema: dict[str, Any] | None = None,
        max_tokens: int = 256,
        stop: list[str] | None = None,
        special: bool = False,
    ) -> Completion:
        """Complete ``prompt``; with ``json_schema``, output is constrained to match it.

        Blocking: callers in async code run it in a worker thread. When ``prompt`` extends the
        previous call's prompt + completion, only the new tokens are evaluated. ``special``: the prompt
        spells special tokens (a chat template's turn markers) that must be parsed as such; the caller
        has neutralised any in text it does not control (``chat.neutralise``).
        """
        ...

    def close(self) -> None:
        """Free the model."""
        ...
