"""edge <-> hub replication over NATS JetStream, used by both sides.

``streams`` (the topology as data), ``server`` (a local nats-server), ``publisher`` (edge: the outbox
to JetStream, in order, bounded in flight), ``applier`` (hub: each event applied exactly once, in
per-device order, dead letters for bad messages).
"""

from .applier import ApplierStats, EventApplier, decode
from .errors import MessageRejected, Stopped, SyncError
from .publisher import OutboxPublisher, PublisherStats
from .server import NatsServer, free_port
from .streams import BUCKETS, STREAMS, ensure_topology
from .waiting import any_set, until_stopped

__all__ = [
    "BUCKETS",
    "STREAMS",
    "ApplierStats",
    "EventApplier",
    "MessageRejected",
    "NatsServer",
    "OutboxPublisher",
    "PublisherStats",
    "Stopped",
    "SyncError",
    "any_set",
    "decode",
    "ensure_topology",
    "free_port",
    "until_stopped",
]
