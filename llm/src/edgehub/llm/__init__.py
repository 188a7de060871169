"""The brain: a local model behind the ``Brain`` protocol (llama.cpp by default), with grammar-constrained
JSON output. Shared by the edge (the agents' ReAct steps) and the hub (consolidation, planning).

``LlamaBrain`` is imported on first use: code that only needs the protocol (and unit tests with
``fake.FakeBrain``) does not load llama.cpp.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import Brain, Completion
from .chat import ChatFormat, neutralise
from .errors import LlmError, ModelFileError
from .gate import ModelGate
from .settings import LlamaSettings, check_model_file, default_model_path, packaged_model_path

if TYPE_CHECKING:
    from .llama import LlamaBrain

__all__ = [
    "Brain",
    "ChatFormat",
    "Completion",
    "LlamaBrain",
    "LlamaSettings",
    "LlmError",
    "ModelFileError",
    "ModelGate",
    "check_model_file",
    "default_model_path",
    "neutralise",
    "packaged_model_path",
]


def __getattr__(name: str) -> Any:
    if name == "LlamaBrain":
        from .llama import LlamaBrain

        return LlamaBrain
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
