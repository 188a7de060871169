"""Errors of the warm worker and its snapshots (both under the edge's ``EdgeError``).

EdgeError
├── WorkerError          the worker process could not be started or stopped answering (``retryable``)
└── SnapshotError        a checkpoint or restore failed (``reason``); the caller starts cold instead
    └── SnapshotRefused  the image does not fit this machine or model: refused before CRIU runs
"""

from __future__ import annotations

from ..errors import EdgeError


class WorkerError(EdgeError):
    """The worker process failed; the next call starts a new one."""

    retryable = True


class SnapshotError(EdgeError):
    """A checkpoint or a restore did not happen; nothing is lost (a snapshot is only an accelerator)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class SnapshotRefused(SnapshotError):
    """The image was taken on another kernel, CPU, CRIU, runtime or model, or it is unreadable."""
