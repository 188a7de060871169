"""The edge's brain: the shared llama.cpp brain (``edgehub.llm``) opened from the ``[model]`` section,
its errors reported as the edge's own ``ModelError``."""

from __future__ import annotations

from edgehub.llm import LlamaSettings, ModelFileError
from edgehub.llm.llama import LlamaBrain

from .config import ModelConfig
from .errors import ModelError


def llama_settings(cfg: ModelConfig) -> LlamaSettings:
    return LlamaSettings(
        path=cfg.path,
        n_ctx=cfg.n_ctx,
        n_threads=cfg.n_threads,
        n_batch=cfg.n_batch,
        seed=cfg.seed,
        temperature=cfg.temperature,
        strict_strings=cfg.strict_strings,
        grammar_bounds=cfg.grammar_bounds,
        path_key="model.path",
    )


def open_brain(cfg: ModelConfig) -> LlamaBrain:
    """Load the model ``cfg`` names (default: ``default_model_path``); ModelError if it cannot be used."""
    try:
        return LlamaBrain.open(llama_settings(cfg))
    except ModelFileError as exc:
        raise ModelError(exc.reason, path=exc.path) from None
