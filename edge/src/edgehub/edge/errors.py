"""Errors raised by the edge daemon.

Every error carries data a caller can act on, ``code`` says what kind of failure and ``retryable``
whether trying again may help (the one root: ``edgehub.protocol.errors.EdgehubError``).

    EdgeError
    ├── ConfigError          bad or unreadable configuration (``key`` names the offending setting)
    ├── ModelError           model file missing, corrupt or not a GGUF (``path``)
    ├── StoreError           the durable store cannot be opened or migrated (``path``)
    │   ├── SchemaVersionError  the store was written by a newer edgehub
    │   ├── StoreDamaged        SQLite's check found the file damaged (``problems``)
    │   ├── StoreRolledBack     the file is behind what it had committed (``lost``: a ``Rollback``)
    │   └── StoreFull           its file system is full (SQLITE_FULL, ENOSPC): the write was rolled
    │                           back, retryable once there is space (agents pause meanwhile)
    ├── ToolError            a tool could not be registered or loaded (``tool``)
    ├── GoalError            a goal this device cannot take: empty, too long, or more than the context holds
    ├── ShadowRefused        a rollout's shadow model it cannot run: not held, not verified, unloadable
    └── AgentNotFound        no agent with that id (``agent_id``)

Tool *call* failures are not exceptions for the agent loop: the gateway turns them into error
observations the model can read, so a bad call never crashes a step.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgehub.protocol.errors import EdgehubError, ErrorCode


class EdgeError(EdgehubError):
    """Root of every error the edge daemon raises on purpose."""

    code = ErrorCode.FAILED_PRECONDITION


class ConfigError(EdgeError):
    """Configuration is missing, unreadable or invalid."""

    code = ErrorCode.INVALID_ARGUMENT

    def __init__(self, message: str, *, key: str | None = None, path: str | None = None) -> None:
        self.key = key
        self.path = path
        where = f" in {path}" if path else ""
        super().__init__(f"config error{where}: {message}")


class ModelError(EdgeError):
    """The model file cannot be used."""

    def __init__(self, message: str, *, path: str) -> None:
        self.path = path
        super().__init__(f"model {path}: {message}")


class StoreError(EdgeError):
    """The durable store cannot be opened or used."""

    def __init__(self, message: str, *, path: str) -> None:
        self.path = path
        super().__init__(f"store {path}: {message}")


class StoreFull(StoreError):
    """The store's file system is full: the write (a step's checkpoint, an acknowledgement) was rolled
    back whole, nothing committed by halves. The daemon pauses its agents and resumes them by itself
    once there is space again (``pressure.py``)."""

    code = ErrorCode.RESOURCE_EXHAUSTED
    retryable = True

    def __init__(self, *, path: str, detail: str) -> None:
        self.detail = detail
        super().__init__(f"the file system is full ({detail}); the write was rolled back", path=path)


class SchemaVersionError(StoreError):
    """The store's schema is newer than this daemon understands."""

    def __init__(self, *, path: str, found: int, supported: int) -> None:
        self.found = found
        self.supported = supported
        super().__init__(
            f"schema version {found} is newer than this edgehub supports ({supported}); upgrade edgehub",
            path=path,
        )


class StoreDamaged(StoreError):
    """SQLite's own check (``PRAGMA quick_check`` at open, ``integrity_check`` in ``edge doctor --store``)
    found the file damaged: nothing is run on it."""

    def __init__(self, *, path: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            f"damaged ({problems[0] if problems else 'check failed'}"
            f"{f' and {len(problems) - 1} more' if len(problems) > 1 else ''}); nothing was run on it."
            " See `edgehub edge doctor --store`; recover by restoring the file from a backup or moving"
            " it aside (docs/edge.md, Durability of the store)",
            path=path,
        )


@dataclass(frozen=True, slots=True)
class Rollback:
    """What a store that went back in time lost (``StoreRolledBack.lost``; the watermark's check and
    the hub's applied sequence find it: ``store/sqlite/watermark.py``)."""

    found: int
    """The generation the database has."""
    recorded: int
    """The generation the watermark says was committed."""
    acked_seq: int
    """The highest outbox sequence the hub side had acknowledged."""
    outbox_seq: int
    """The highest outbox sequence the database has (below ``acked_seq``: sequences the hub already
    applied would be given to new events, and the hub would drop them as resends)."""
    hub_applied: int = 0
    """The last outbox sequence the hub said it applied from this device, when it was asked and that
    is beyond the database's outbox (0: not asked, or not beyond)."""


class StoreRolledBack(StoreError):
    """The store is behind the watermark kept beside it, or its outbox ends below what the hub applied
    from this device: committed steps were lost (a truncated WAL, a restored old copy). Nothing may be
    written or resumed until the loss is accepted or recovered from the hub; the daemon runs
    restricted meanwhile."""

    def __init__(self, *, path: str, lost: Rollback) -> None:
        self.found = lost.found
        self.recorded = lost.recorded
        self.lost = lost
        if lost.found < lost.recorded:
            what = f"store generation {lost.found}, but {lost.recorded} was committed (watermark beside it)"
        else:
            by = "the hub applied" if lost.hub_applied else "the hub side acknowledged"
            what = f"its outbox ends at seq {lost.outbox_seq}, but {by} up to seq {lost.acked_seq}"
        super().__init__(
            f"rolled back: {what}; resuming would repeat steps and their side effects, so no agent runs."
            " Inspect with `edgehub edge doctor --store`; recover with"
            " `edgehub edge doctor --store --recover-from-hub` or accept the loss with"
            " `edgehub edge doctor --store --accept-rollback`",
            path=path,
        )


class ToolError(EdgeError):
    """A tool cannot be registered or loaded."""

    code = ErrorCode.INVALID_ARGUMENT

    def __init__(self, message: str, *, tool: str) -> None:
        self.tool = tool
        super().__init__(f"tool {tool!r}: {message}")


class GoalError(EdgeError):
    """A goal this device cannot take: empty, over ``MAX_GOAL_CHARS``, not text, or more tokens than the
    model's context leaves for it (``agent/goal.py``)."""

    code = ErrorCode.INVALID_ARGUMENT


class AgentNotFound(EdgeError):
    """No agent with that id exists in this device's store."""

    code = ErrorCode.NOT_FOUND

    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id
        super().__init__(f"no agent {agent_id!r} on this device")


class ShadowRefused(EdgeError):
    """A shadow model (parity-gated rollout) this device cannot run: not held at its model path, its
    bytes do not hash to its name, or it does not load."""
