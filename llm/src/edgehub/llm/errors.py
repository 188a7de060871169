"""Errors raised by the brain package.

    LlmError                 under the one root (``edgehub.protocol.errors.EdgehubError``)
    └── ModelFileError       the model file is missing, not a GGUF, or llama.cpp cannot load it (``path``)

The daemons translate these into their own trees (the edge's ``ModelError``, the hub's
``DreamerError``) so an operator sees one kind of error per daemon.
"""

from __future__ import annotations

from edgehub.protocol.errors import EdgehubError, ErrorCode


class LlmError(EdgehubError):
    """Root of every error the brain package raises on purpose."""


class ModelFileError(LlmError):
    """The model file cannot be used."""

    code = ErrorCode.FAILED_PRECONDITION

    def __init__(self, message: str, *, path: str) -> None:
        self.path = path
        self.reason = message
        """What is wrong with the file, without the path."""
        super().__init__(f"model {path}: {message}")
