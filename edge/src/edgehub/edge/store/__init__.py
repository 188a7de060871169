"""The edge's durable store: agent state, mind-log, L2 memory, tool intents and the outbox."""

from .base import EdgeStore, Intent, OutboxEntry
from .migrations import LATEST, MIGRATIONS, Migration
from .sqlite import SqliteStore

__all__ = ["LATEST", "MIGRATIONS", "EdgeStore", "Intent", "Migration", "OutboxEntry", "SqliteStore"]
