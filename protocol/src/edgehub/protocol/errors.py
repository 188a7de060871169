"""The one root of every error edgehub raises on purpose.

Every error carries a ``code`` (what kind of failure, in the canonical vocabulary every RPC system
shares) and ``retryable`` (whether the same call may succeed later). Domain code raises these and never
knows the transport: the hub's API maps ``code`` to a gRPC status in one place
(``edgehub.hub.api.errors``), the CLI maps errors to exit codes in one place (``edgehub.cli.common``).

    EdgehubError                  code, retryable
    ├── SyncError                 edgehub.sync.errors      replication, NATS, the KV record store
    ├── LlmError                  edgehub.llm.errors       the brain: model files, llama.cpp
    ├── HardwareError             edgehub.hardware.errors  profiles and detection
    ├── ConfigError               edgehub.cli.config       a config file or environment override (``key``)
    ├── EdgeError                 edgehub.edge.errors      the edge daemon
    └── HubError                  edgehub.hub.errors       the hub daemon (goals, migrations, the graph)

Each member draws its own subtree in its ``errors.py``.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """What kind of failure (the canonical codes; the API answers with the gRPC status of that name)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    """The input is wrong: retrying the same call cannot help."""
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    """The system is not in a state that allows the call (a feature off, a record in another phase)."""
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    ABORTED = "ABORTED"
    """Lost a race (a compare-and-set conflicted too often): retry the whole operation."""
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAVAILABLE = "UNAVAILABLE"
    """A dependency (NATS, Neo4j, the hub) cannot be reached now."""
    INTERNAL = "INTERNAL"


class EdgehubError(Exception):
    """Root of every error edgehub raises on purpose.

    Subclasses set ``code`` and ``retryable`` as class attributes, or per instance through the
    keyword arguments; ``message`` is the text without the class name."""

    code: ErrorCode = ErrorCode.INTERNAL
    retryable: bool = False

    def __init__(
        self, message: str = "", *, code: ErrorCode | None = None, retryable: bool | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable
