"""The brain: a local model behind the ``Brain`` protocol (llama.cpp by default)."""

from .base import Brain, Completion
from .gate import ModelGate
from .llama import LlamaBrain, default_model_path

__all__ = ["Brain", "Completion", "LlamaBrain", "ModelGate", "default_model_path"]
