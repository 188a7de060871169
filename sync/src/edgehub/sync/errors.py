"""Errors of the sync member.

SyncError
├── (the server could not be started / reached: plain SyncError with the reason)
├── MessageRejected   a message that cannot be processed (malformed, oversized, unknown version);
│                     ``reason`` goes to the dead-letter subject with it
└── Stopped           the component was told to stop before what it waited for happened
"""

from __future__ import annotations


class SyncError(Exception):
    """Root of the sync member's errors."""


class MessageRejected(SyncError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Stopped(SyncError):
    """``until_stopped``: the stop event came first."""

    def __init__(self) -> None:
        super().__init__("stopped")
