"""Errors of the hub member, under the one root (``edgehub.protocol.errors.EdgehubError``).

Each carries ``code`` (what kind of failure, transport-neutral) and ``retryable``; the management API
maps them to gRPC status codes in one place (``api/errors.py``), never the domain code.

HubError
├── HubConfigError      a bad config file or environment override (``key`` names the setting)
├── Refused             a request the hub refuses; ``code`` says why (not found, a failed precondition...)
│   ├── GoalError       goals/: submit, decide, cancel; a goal update that lost too many races
│   ├── MigrationError  fleet/migration.py: a migration refused or lost a race
│   ├── OutOfScope      fleet/scopes.py: a device, agent, goal or token outside the caller's scope
│   └── EnrollmentRefused  api/access.py: an unknown, spent, expired or misused enrollment token
├── NatsLost            app.py: the hub's NATS connection closed for good (the daemon exits non-zero)
├── PlanningError       goals/errors.py: a plan or an answer the model wrote is unusable
└── KnowledgeError      knowledge/errors.py: the L4 knowledge graph
"""

from __future__ import annotations

from edgehub.protocol.errors import EdgehubError, ErrorCode


class HubError(EdgehubError):
    """Root of the hub's errors."""


class NatsLost(HubError):
    """The hub's NATS connection closed for good (the client gave up, or the embedded nats-server died):
    the daemon's run ends with it, so the process exits non-zero and its supervisor restarts it."""

    code = ErrorCode.UNAVAILABLE


class HubConfigError(HubError):
    """The configuration cannot be used; the message names the key."""

    code = ErrorCode.INVALID_ARGUMENT

    def __init__(self, message: str, *, key: str | None = None, path: str | None = None) -> None:
        where = f"{path}: " if path else ""
        super().__init__(f"{where}{message}")
        self.key = key
        self.path = path


class Refused(HubError):
    """A request the hub refuses; ``code`` says why, ``message`` in words an operator can act on."""

    def __init__(self, code: ErrorCode, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(
            message, code=code, retryable=code == ErrorCode.ABORTED if retryable is None else retryable
        )


class GoalError(Refused):
    """A goal request refused."""


class MigrationError(Refused):
    """A migration request refused."""


class EnrollmentRefused(Refused):
    """An enrollment token that cannot be spent (unknown, used, expired, another device's)."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.FAILED_PRECONDITION, message)


class OutOfScope(Refused):
    """What a request names is outside the caller's scope (PERMISSION_DENIED): ``device_id`` when it
    named a device, ``scope`` the caller's, in words."""

    def __init__(self, message: str, device_id: str = "", scope: str = "") -> None:
        super().__init__(ErrorCode.PERMISSION_DENIED, message)
        self.device_id = device_id
        self.scope = scope
