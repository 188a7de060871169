"""The edge's durable store: agent state, mind-log, L2 memory, tool intents and the outbox."""

from .base import Approval, EdgeStore, Intent, OutboxEntry, OutgoingFilter, VaultEntry
from .schema import LATEST, MIGRATIONS, Migration
from .sqlite import SqliteStore

__all__ = [
    "LATEST",
    "MIGRATIONS",
    "Approval",
    "EdgeStore",
    "Intent",
    "Migration",
    "OutboxEntry",
    "OutgoingFilter",
    "SqliteStore",
    "VaultEntry",
]
