"""The store's watermark: what it had committed, kept OUTSIDE the database, so a database that went back
in time (a truncated or lost WAL, an old copy put back) is caught instead of silently resumed.

``<db>.watermark`` beside the database holds the highest store generation known committed (every write
transaction bumps the generation inside the database; the watermark is rewritten after each step's
checkpoint and each outbox acknowledgement) and the highest outbox sequence the hub side acknowledged.
It is written after the database commit, so it never runs ahead of what is durable: a crash in between
leaves it one commit behind, which is harmless. On open, a database whose generation is below the
watermark's, or whose outbox ends below the acknowledged sequence, has lost commits (``Rollback``).
The device's files are not trusted alone: with a hub, the daemon (and ``edge doctor --store``) also
asks it for the last sequence it applied from this device (``Connection.compare_hub``), which catches
a watermark that went back together with the database.

The file is one JSON object with a ``version`` (so its format can change), written to a temporary file,
fsynced, renamed over the old one and the folder fsynced: a crash leaves the old or the new one, whole.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgehub.sync.auth import write_secret

from ...errors import Rollback, StoreError

WATERMARK_VERSION = 1
"""The watermark file's format version (``version`` in the file)."""


@dataclass(frozen=True, slots=True)
class Watermark:
    """What the store had committed, as recorded outside it."""

    generation: int
    """The store generation of the last checkpoint recorded (the database's ``store_meta``)."""
    acked_seq: int
    """The highest outbox sequence the hub side acknowledged (JetStream stored it)."""


@dataclass(frozen=True, slots=True)
class AcceptedRollback:
    """A rollback an operator accepted (a row of ``rollbacks``)."""

    lost: Rollback
    by: str
    """Who accepted it."""
    agents: tuple[str, ...]
    """Active agents that resume from the older checkpoints the store kept."""
    seen_lost: tuple[str, ...] = ()
    """What was lost that the hub had seen, one line each (``--recover-from-hub``)."""


class WatermarkFile:
    """``<db>.watermark``: read at open, rewritten after checkpoints and outbox acknowledgements."""

    def __init__(self, db_path: Path) -> None:
        self.path = db_path.with_name(db_path.name + ".watermark")

    def read(self) -> Watermark | None:
        """The recorded watermark; None when there is none (a new store, or one from before watermarks).
        ``StoreError`` when it cannot be read or is not a watermark this edgehub knows."""
        try:
            raw = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StoreError(f"unreadable watermark {self.path}: {exc}", path=str(self.path)) from None
        if not isinstance(raw, dict) or raw.get("version") != WATERMARK_VERSION:
            found = raw.get("version") if isinstance(raw, dict) else raw
            raise StoreError(
                f"watermark {self.path} has version {found!r}; this edgehub reads {WATERMARK_VERSION}",
                path=str(self.path),
            )
        try:
            return Watermark(int(raw["generation"]), int(raw["acked_seq"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"malformed watermark {self.path}: {exc!r}", path=str(self.path)) from None

    def write(self, mark: Watermark) -> None:
        """Replace the watermark durably and atomically."""
        data = {"version": WATERMARK_VERSION, "generation": mark.generation, "acked_seq": mark.acked_seq}
        write_secret(self.path, json.dumps(data))  # per-process temporary file: the CLI writes too
