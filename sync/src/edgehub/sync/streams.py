"""The JetStream topology, as data: streams, KV buckets and durable consumers both sides rely on.

``ensure_topology`` creates or updates them idempotently (any number of hub processes may call it at
start-up), with the size and age limits of ``StreamLimits`` (the hub's ``[retention]``): an existing
stream whose limits differ is updated in place, one whose limits match is left alone.

No event is dropped before the hub applied it: the events stream has no age limit of its own (the
hub's retention task purges only what the hub's durable consumer acknowledged, i.e. applied, and is
older than the retention) and discards NEW at its byte limit, so a full stream refuses publishes
(the edges keep the events in their outbox and retry) instead of deleting old, unapplied ones.

Every server of ours runs with ``sync_interval: always`` (PLATFORM.md: an ack must mean the data is
on disk), which the harness and ``edgehub hub run`` configure.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError

from edgehub.protocol import subjects

MAX_EVENT_BYTES = 1024 * 1024
DUPLICATE_WINDOW_S = 120.0


@dataclass(frozen=True, slots=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    description: str
    max_msg_size: int = MAX_EVENT_BYTES
    max_age_s: float = 0.0
    """0: keep until limits (the events stream is the hub's mind-log store)."""
    retention: RetentionPolicy = RetentionPolicy.LIMITS
    max_bytes: int = -1
    """-1: unlimited."""
    discard: DiscardPolicy = DiscardPolicy.OLD
    """At ``max_bytes``: OLD deletes the oldest messages, NEW refuses the publish."""

    def config(self) -> StreamConfig:
        return StreamConfig(
            name=self.name,
            subjects=list(self.subjects),
            description=self.description,
            retention=self.retention,
            storage=StorageType.FILE,
            max_msg_size=self.max_msg_size,
            max_age=self.max_age_s,
            duplicate_window=DUPLICATE_WINDOW_S,
            max_bytes=self.max_bytes,
            discard=self.discard,
        )


@dataclass(frozen=True, slots=True)
class BucketSpec:
    name: str
    description: str
    history: int = 1
    ttl_s: float | None = None
    """Entries not updated for this long expire (leases)."""

    def config(self) -> KeyValueConfig:
        return KeyValueConfig(
            bucket=self.name,
            description=self.description,
            history=self.history,
            storage=StorageType.FILE,
            ttl=self.ttl_s,
        )


STREAMS = (
    StreamSpec(
        subjects.EVENTS_STREAM, (subjects.ALL_EVENTS,), "events from edges (the mind-log of every agent)"
    ),
    StreamSpec(
        subjects.COMMANDS_STREAM,
        (subjects.ALL_COMMANDS,),
        "commands to edges",
        retention=RetentionPolicy.LIMITS,
    ),
    StreamSpec(
        subjects.DEADLETTER_STREAM,
        (subjects.ALL_DEADLETTER,),
        "messages that could not be processed, with the reason in the Edgehub-Reason header",
        max_age_s=14 * 24 * 3600.0,
    ),
)


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """The limits the hub sets on its streams (``[retention]`` in the hub's config)."""

    events_max_bytes: int = 4 * 1024**3
    """The events stream's size; at it, publishes are refused (DiscardPolicy.NEW), never old events
    dropped. Applied events older than the retention are purged by the hub (``hub/retention.py``)."""
    commands_max_bytes: int = 256 * 1024**2
    """The commands stream's size; at it, new commands are refused (DiscardPolicy.NEW)."""
    commands_max_age_s: float = 7 * 86400.0
    """Commands older than this are deleted (a device offline longer misses them)."""


def streams(limits: StreamLimits) -> tuple[StreamSpec, ...]:
    """``STREAMS`` with ``limits`` applied."""
    events, commands, deadletter = STREAMS
    return (
        replace(events, max_bytes=limits.events_max_bytes, discard=DiscardPolicy.NEW),
        replace(
            commands,
            max_bytes=limits.commands_max_bytes,
            max_age_s=limits.commands_max_age_s,
            discard=DiscardPolicy.NEW,
        ),
        deadletter,
    )


APPLIED = BucketSpec("edgehub-applied", "per device: the outbox sequence the hub applied last")
AGENTS = BucketSpec("edgehub-agents", "agent registry: owner device, epoch, status, last step")
DEVICES = BucketSpec("edgehub-devices", "device twins: reported state and last heartbeat")
LEASE_TTL_S = 6.0
LEASES = BucketSpec(
    "edgehub-leases", "single-active work among hub processes (holder id, renewed)", ttl_s=LEASE_TTL_S
)
TOKENS = BucketSpec("edgehub-tokens", "API bearer tokens by SHA-256: operator name and role")
ENROLLMENTS = BucketSpec(
    "edgehub-enrollments", "one-time device enrollment tokens by SHA-256: device id, expiry"
)
CREDENTIALS = BucketSpec(
    "edgehub-credentials", "per device: the NATS user keys enrollment issued, and its revocation"
)
MIGRATIONS = BucketSpec(
    "edgehub-migrations", "per agent: its latest migration (phase, source, target, epochs), by CAS"
)
GOALS = BucketSpec(
    "edgehub-goals", "per goal: its plan revisions, tasks (status, device, attempts, usage), audit, by CAS"
)
POLICIES = BucketSpec(
    "edgehub-policies", "fleet policy pushes by version: text, hash, who pushed, when, to which devices"
)
POLICY_DEVICES = BucketSpec(
    "edgehub-policy-devices", "per device: the latest policy bundle the hub signed for it (hub only)"
)
ROLLOUTS = BucketSpec(
    "edgehub-rollouts", "parity-gated model rollouts: waves, divergence, examples, decisions (hub only)"
)
BUCKETS = (
    APPLIED, AGENTS, DEVICES, LEASES, TOKENS, ENROLLMENTS, CREDENTIALS, MIGRATIONS, GOALS, POLICIES,
    POLICY_DEVICES, ROLLOUTS,
)  # fmt: skip

HANDOVERS = "edgehub-handovers"
"""Object store: the AgentBundle of each migration in flight, by migration id (hub credentials only:
devices put and get theirs through the API, which checks that the migration is theirs)."""
HANDOVER_TTL_S = 7 * 24 * 3600.0
MAX_HANDOVER_BYTES = 16 * 1024 * 1024

HUB_EVENTS_CONSUMER = "hub-events"
"""The durable pull consumer every hub process shares (work is split between them)."""


async def ensure_topology(js: JetStreamContext, limits: StreamLimits | None = None) -> None:
    """Create or update every stream and bucket (idempotent, safe to race); ``limits``: the streams'
    (None: ``StreamLimits()``'s defaults)."""
    for spec in streams(limits or StreamLimits()):
        await _ensure_stream(js, spec.config())
    for bucket in BUCKETS:
        try:
            await js.key_value(bucket.name)
        except (NotFoundError, BadRequestError):
            await js.create_key_value(bucket.config())
    try:
        await js.object_store(HANDOVERS)
    except (NotFoundError, BadRequestError):
        config = ObjectStoreConfig(
            bucket=HANDOVERS,
            description="agent state handed over in migrations, by migration id",
            ttl=HANDOVER_TTL_S,
            storage=StorageType.FILE,
        )
        await js.create_object_store(HANDOVERS, config=config)


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create the stream, or update an existing one whose limits differ (an update with the same
    config would be a no-op, so it is skipped: several hub processes start at once)."""
    assert config.name is not None
    try:
        info = await js.stream_info(config.name)
    except NotFoundError:
        try:
            await js.add_stream(config)
            return
        except BadRequestError:  # another hub process created it meanwhile
            info = await js.stream_info(config.name)
    have = info.config
    if (have.max_bytes, have.max_age, have.discard, have.max_msg_size, have.duplicate_window) != (
        config.max_bytes,
        config.max_age,
        config.discard,
        config.max_msg_size,
        config.duplicate_window,
    ):
        await js.update_stream(config)
