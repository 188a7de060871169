"""Errors of the L4 knowledge graph (under the hub's root, ``HubError``).

HubError                      ``code`` and ``retryable`` from the one root (``EdgehubError``)
└── KnowledgeError            root of the graph's errors
    ├── InvalidKnowledge      an entity, fact or query argument failed validation before anything was sent;
    │                         ``index`` (position in the batch) and ``field`` name the culprit
    ├── BatchRejected         Neo4j rejected a write (constraint, type, ...); the whole batch rolled back;
    │                         ``neo4j_code`` is Neo4j's status code
    ├── GraphUnavailable      Neo4j cannot be reached or authenticated to (retryable when it is the network)
    ├── SchemaError           the graph's migrations do not match this code (newer graph, edited migration)
    ├── Neo4jLaunchError      the embedded Neo4j launcher is missing or did not start (``log`` has the tail)
    ├── ConsolidationConflict another consolidation took some of the run's episodes first; nothing of the
    │                         run was written (retryable: the next run starts from what is still pending)
    └── DreamerError          the consolidation job cannot run: its model is missing or unusable (``path``)
"""

from __future__ import annotations

from pathlib import Path

from edgehub.protocol.errors import ErrorCode

from ..errors import HubError


class KnowledgeError(HubError):
    """Root of the knowledge graph's errors."""

    code = ErrorCode.FAILED_PRECONDITION


class InvalidKnowledge(KnowledgeError):
    code = ErrorCode.INVALID_ARGUMENT

    def __init__(self, message: str, *, field: str = "", index: int | None = None) -> None:
        where = f"item {index}: " if index is not None else ""
        super().__init__(f"{where}{field + ': ' if field else ''}{message}")
        self.field = field
        self.index = index


class BatchRejected(KnowledgeError):
    """``code``: UNAVAILABLE when Neo4j says a retry may succeed (a transient failure), else
    FAILED_PRECONDITION."""

    def __init__(self, message: str, *, code: str = "", retryable: bool = False) -> None:
        super().__init__(
            f"the batch was rolled back: {message}" + (f" ({code})" if code else ""),
            code=ErrorCode.UNAVAILABLE if retryable else ErrorCode.FAILED_PRECONDITION,
            retryable=retryable,
        )
        self.neo4j_code = code


class GraphUnavailable(KnowledgeError):
    """``code``: UNAVAILABLE while it may come back (the network); FAILED_PRECONDITION when only the
    operator can cure it (credentials, a missing password, a service not started)."""

    code = ErrorCode.UNAVAILABLE

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        code = ErrorCode.UNAVAILABLE if retryable else ErrorCode.FAILED_PRECONDITION
        super().__init__(message, code=code, retryable=retryable)


class SchemaError(KnowledgeError):
    pass


class Neo4jLaunchError(KnowledgeError):
    def __init__(self, message: str, *, log: Path | None = None) -> None:
        super().__init__(message + (f" (log {log})" if log else ""))
        self.log = log


class ConsolidationConflict(KnowledgeError):
    code = ErrorCode.ABORTED
    retryable = True

    def __init__(self, run_id: str, episodes: list[str]) -> None:
        shown = ", ".join(episodes[:5]) + (" ..." if len(episodes) > 5 else "")
        super().__init__(
            f"run {run_id}: {len(episodes)} episodes were no longer pending ({shown}); nothing was written"
        )
        self.run_id = run_id
        self.episodes = episodes


class DreamerError(KnowledgeError):
    def __init__(self, message: str, *, path: str = "") -> None:
        super().__init__(message)
        self.path = path
