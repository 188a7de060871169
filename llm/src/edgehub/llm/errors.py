"""Errors raised by the brain package.

    LlmError                 root; ``retryable`` says whether trying again may help
    └── ModelFileError       the model file is missing, not a GGUF, or llama.cpp cannot load it (``path``)

The daemons translate these into their own trees (the edge's ``ModelError``, the hub's
``DreamerError``) so an operator sees one kind of error per daemon.
"""

from __future__ import annotations


class LlmError(Exception):
    """Root of every error the brain package raises on purpose."""

    retryable: bool = False


class ModelFileError(LlmError):
    """The model file cannot be used."""

    def __init__(self, message: str, *, path: str) -> None:
        self.path = path
        self.reason = message
        """What is wrong with the file, without the path."""
        super().__init__(f"model {path}: {message}")
