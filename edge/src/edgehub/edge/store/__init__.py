"""The edge's durable store: agent state, mind-log, L2 memory, tool intents, the outbox, approvals, L3
episodes and the knowledge cache (``base`` the protocols, ``sqlite`` the implementation, ``schema`` its
migrations)."""

from .base import (
    AgentTransfer,
    Approval,
    DeviceStore,
    EdgeStore,
    EpisodeStore,
    Intent,
    KnowledgeCache,
    OutboxEntry,
    OutgoingFilter,
    VaultEntry,
)
from .schema import LATEST, MIGRATIONS, Migration
from .sqlite import SqliteStore

__all__ = [
    "LATEST",
    "MIGRATIONS",
    "AgentTransfer",
    "Approval",
    "DeviceStore",
    "EdgeStore",
    "EpisodeStore",
    "Intent",
    "KnowledgeCache",
    "Migration",
    "OutboxEntry",
    "OutgoingFilter",
    "SqliteStore",
    "VaultEntry",
]
