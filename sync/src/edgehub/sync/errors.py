"""Errors of the sync member (under the one root, ``edgehub.protocol.errors.EdgehubError``).

SyncError                 code UNAVAILABLE unless a subclass says otherwise
├── (the server could not be started / reached: plain SyncError with the reason)
├── MessageRejected   a message that cannot be processed (malformed, oversized, unknown version);
│   │                 ``reason`` goes to the dead-letter subject with it
│   └── DecisionRefused  (decisions.py) an approval decision not signed by the hub for this device,
│                        expired or replayed
├── Stopped           the component was told to stop before what it waited for happened
├── AuthError         (auth.py) a credential, key or JWT that cannot be used
└── RecordConflict, RecordExists, RecordUnreadable   (records.py) the KV record store
"""

from __future__ import annotations

from edgehub.protocol.errors import EdgehubError, ErrorCode


class SyncError(EdgehubError):
    """Root of the sync member's errors."""

    code = ErrorCode.UNAVAILABLE


class MessageRejected(SyncError):
    code = ErrorCode.INVALID_ARGUMENT

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Stopped(SyncError):
    """``until_stopped``: the stop event came first."""

    code = ErrorCode.ABORTED

    def __init__(self) -> None:
        super().__init__("stopped")


def dead_letter_headers(reason: str, subject: str) -> dict[str, str]:
    """The headers of a dead letter: why (``Edgehub-Reason``) and where it came from
    (``Edgehub-Subject``), each one printable line of bounded length. Reasons quote what a device
    sent; a line break in a header value would add headers of the device's choosing (a
    ``Nats-Msg-Id`` that makes the stream drop later dead letters as duplicates)."""
    return {"Edgehub-Reason": _one_line(reason, 500), "Edgehub-Subject": _one_line(subject, 256)}


def _one_line(text: str, limit: int) -> str:
    return "".join(c if c.isprintable() else "?" for c in text[:limit])
