"""The L4 model: entities, facts (a fact whose object is an entity is a relation), bi-temporal validity
and provenance, as frozen values; plus the pure logic the graph relies on (fact ids, validation).

Bi-temporal: ``valid_from``/``valid_to`` say when a fact was true in the world (valid time);
``recorded_at``/``superseded_at`` say when the hub learned it and when it stopped believing it
(transaction time). A fact's id is a hash of its content and provenance, so writing the same fact twice
is a no-op, and two devices reporting the same thing make two facts with their own provenance.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from .errors import InvalidKnowledge

Value = str | int | float | bool
"""A literal a fact can hold: what Neo4j stores natively and the driver round-trips exactly."""

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_ID = 512
MAX_TEXT = 16_384
MAX_BATCH = 50_000
EMBEDDING_DIM = 384
"""Episode embeddings: all-MiniLM-L6-v2, what the edges embed with."""
PREDICATE = re.compile(r"[a-z][a-z0-9_]{0,63}")
Direction = Literal["out", "in", "both"]


@dataclass(frozen=True, slots=True)
class Entity:
    """Something the fleet knows about: a device, a site, a part, a person."""

    id: str
    """Stable key chosen by the writer (e.g. ``device:edge-1``); entities are merged on it."""
    name: str = ""
    """Human-readable name; empty: the id."""
    kind: str = "thing"
    """What sort of entity (``device``, ``site``, ``person`` ...)."""


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where a fact came from; at least one field is set."""

    device_id: str = ""
    """The device whose agent observed it."""
    agent_id: str = ""
    """The agent that observed or concluded it."""
    episode_id: str = ""
    """The L3 episode it was abstracted from (consolidation)."""
    step_id: str = ""
    """The mind-log step (event id) it was observed in."""


@dataclass(frozen=True, slots=True)
class Fact:
    """``subject predicate object`` (a relation between two entities) or ``subject predicate value``
    (a literal), true from ``valid_from`` until ``valid_to``."""

    subject: str
    """Entity id."""
    predicate: str
    """lower_snake_case verb phrase: ``located_in``, ``firmware_version``."""
    valid_from: datetime
    """When it became true in the world (timezone-aware)."""
    provenance: Provenance
    object: str | None = None
    """Entity id: the fact is a relation (exactly one of ``object`` and ``value`` is set)."""
    value: Value | None = None
    """Literal value: str, int (64-bit), finite float or bool."""
    valid_to: datetime | None = None
    """When it stopped being true, if the writer knows; None: open-ended."""
    functional: bool = True
    """The subject has one object for this predicate at a time (``located_in``): a fact with another
    object closes the current one. False for many-valued predicates (``knows``); keep it the same for
    every fact of a predicate. Not part of the fact's id."""

    @property
    def id(self) -> str:
        return fact_id(self)

    @property
    def is_relation(self) -> bool:
        return self.object is not None


@dataclass(frozen=True, slots=True)
class EpisodeRecord:
    """One L3 episode as an edge replicated it (the consolidation's input)."""

    device_id: str
    """The device whose agent lived it."""
    agent_id: str
    """The agent that lived it."""
    key: str
    """The edge's episode key (unique on that device): what a prune command names."""
    text: str
    """What happened (PII-masked at the edge)."""
    embedding: tuple[float, ...]
    """The edge's embedding of the text: all-MiniLM-L6-v2, 384 floats, unit length."""
    at: datetime
    """When it happened (timezone-aware)."""
    importance: float
    """0..1: failures and outcomes more than routine steps."""
    step: int
    """The mind-log step it came from (0: remembered explicitly)."""

    @property
    def id(self) -> str:
        """Unique in the fleet."""
        return f"{self.device_id}/{self.key}"


@dataclass(frozen=True, slots=True)
class DreamPlan:
    """Everything one consolidation run writes, in one transaction (``KnowledgeGraph.consolidate``)."""

    run_id: str
    """Stable for the set of episodes the run took (a re-run after a crash has the same id)."""
    entities: tuple[Entity, ...]
    """Entities the facts name that the graph does not have yet."""
    facts: tuple[Fact, ...]
    """Validated facts abstracted from the clusters."""
    sources: Mapping[str, tuple[str, ...]]
    """Fact id -> the ids of the episodes it was abstracted from (``ABSTRACTED_FROM``)."""
    consolidated: tuple[str, ...]
    """Episode ids abstracted into facts: no longer pending; the edges may prune them."""
    settled: Mapping[str, str]
    """Episode id -> why it leaves the pending set without a fact (the model found none, or it stayed
    alone too long). Settled episodes are not pruned: they stay in L3 at their edge."""
    clusters: int
    """Clusters the model abstracted."""
    rejected: tuple[tuple[str, str], ...] = ()
    """(cluster id, reason) for every fact or cluster dropped."""


@dataclass(frozen=True, slots=True)
class DreamRun:
    """A consolidation run as the graph recorded it."""

    id: str
    at: datetime
    """When it was written."""
    clusters: int
    facts: int
    """Facts it created."""
    episodes: int
    """Episodes it consolidated."""
    settled: int
    rejected: tuple[tuple[str, str], ...]
    prune_sent: bool
    """The edges were sent their prune commands."""


@dataclass(frozen=True, slots=True)
class StoredFact:
    """A fact as the graph knows it at the query's point in transaction time."""

    fact: Fact
    id: str
    recorded_at: datetime
    """When the hub recorded it (transaction time)."""
    valid_to: datetime | None
    """Effective end of validity: the stated one, or earlier if a contradicting fact closed it."""


@dataclass(frozen=True, slots=True)
class AsOf:
    """A point in both times; None: now (valid time) and everything recorded so far (transaction time)."""

    valid_at: datetime | None = None
    """What was true at this time."""
    known_at: datetime | None = None
    """...according to what the hub had recorded by this time."""


@dataclass(frozen=True, slots=True)
class Hop:
    """One step of a multi-hop query: follow relations with ``predicate`` (None: any)."""

    predicate: str | None = None
    direction: Direction = "out"
    """``out``: subject to object; ``in``: object to subject; ``both``."""


@dataclass(frozen=True, slots=True)
class GraphPath:
    """A multi-hop answer: ``entities[i]`` -``facts[i]``- ``entities[i + 1]``."""

    entities: tuple[Entity, ...]
    facts: tuple[StoredFact, ...]


@dataclass(frozen=True, slots=True)
class Subgraph:
    """An entity's neighbourhood: entities within the depth, the relations between them and their
    literal facts."""

    entities: tuple[Entity, ...]
    facts: tuple[StoredFact, ...]
    truncated: bool = False
    """A limit cut the answer short."""


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What one ingest changed."""

    entities: int = 0
    """Entities upserted from the batch's entity list."""
    created: int = 0
    """New facts (facts already in the graph are left alone)."""
    closed: int = 0
    """Facts whose validity a new contradicting fact closed, or that a later known fact bounded."""
    superseded: int = 0
    """Facts with the same start as a contradicting new one: no longer believed."""
    ids: tuple[str, ...] = field(default=())
    """The ids of the batch's facts, in order."""


def utc(t: datetime, what: str = "time", index: int | None = None) -> datetime:
    if t.tzinfo is None or t.utcoffset() is None:
        raise InvalidKnowledge("must be timezone-aware", field=what, index=index)
    return t.astimezone(UTC)


def _iso(t: datetime | None) -> str | None:
    return None if t is None else utc(t).isoformat(timespec="microseconds")


def _typed(value: Value) -> list[object]:
    """The value with its type, so 1, 1.0, True and "1" stay four different objects."""
    if isinstance(value, bool):
        return ["bool", value]
    if isinstance(value, int):
        return ["int", value]
    if isinstance(value, float):
        return ["float", repr(value)]
    return ["str", value]


def object_key(fact: Fact) -> str:
    """What a fact says about its subject, as one comparable string: contradictions compare these."""
    if fact.object is not None:
        return "e:" + fact.object
    assert fact.value is not None
    return "v:" + json.dumps(_typed(fact.value), ensure_ascii=False, separators=(",", ":"))


def fact_id(fact: Fact) -> str:
    """sha256 of the fact's content and provenance (canonical JSON), 32 hex digits."""
    p = fact.provenance
    content = [
        fact.subject,
        fact.predicate,
        object_key(fact),
        _iso(fact.valid_from),
        _iso(fact.valid_to),
        [p.device_id, p.agent_id, p.episode_id, p.step_id],
    ]
    text = json.dumps(content, ensure_ascii=False, separators=(",", ":"))
    return "f" + hashlib.sha256(text.encode()).hexdigest()[:32]


def _text(value: object, what: str, index: int | None, limit: int = MAX_ID, empty: bool = False) -> None:
    if not isinstance(value, str):
        raise InvalidKnowledge(f"must be a string, not {type(value).__name__}", field=what, index=index)
    if not value and not empty:
        raise InvalidKnowledge("must not be empty", field=what, index=index)
    if len(value) > limit:
        raise InvalidKnowledge(f"longer than {limit} characters", field=what, index=index)


def validate_value(value: object, index: int | None = None) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise InvalidKnowledge("integer outside 64 bits", field="value", index=index)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidKnowledge("must be a finite number", field="value", index=index)
    elif isinstance(value, str):
        _text(value, "value", index, MAX_TEXT, empty=True)
    else:
        raise InvalidKnowledge(
            f"must be str, int, float or bool, not {type(value).__name__}", field="value", index=index
        )


def validate_entity(entity: Entity, index: int | None = None) -> None:
    _text(entity.id, "id", index)
    _text(entity.name, "name", index, empty=True)
    _text(entity.kind, "kind", index)


def validate_predicate(predicate: object, index: int | None = None) -> None:
    if not isinstance(predicate, str) or not PREDICATE.fullmatch(predicate):
        raise InvalidKnowledge(
            f"{predicate!r} is not a lower_snake_case name of at most 64 characters",
            field="predicate",
            index=index,
        )


def validate_fact(fact: Fact, index: int | None = None) -> None:
    _text(fact.subject, "subject", index)
    validate_predicate(fact.predicate, index)
    if (fact.object is None) == (fact.value is None):
        raise InvalidKnowledge("exactly one of object and value must be set", field="object", index=index)
    if fact.object is not None:
        _text(fact.object, "object", index)
    else:
        validate_value(fact.value, index)
    start = utc(fact.valid_from, "valid_from", index)
    if fact.valid_to is not None and utc(fact.valid_to, "valid_to", index) <= start:
        raise InvalidKnowledge("must be after valid_from", field="valid_to", index=index)
    p = fact.provenance
    fields = {
        "device_id": p.device_id,
        "agent_id": p.agent_id,
        "episode_id": p.episode_id,
        "step_id": p.step_id,
    }
    for name, text in fields.items():
        _text(text, f"provenance.{name}", index, empty=True)
    if not any(fields.values()):
        raise InvalidKnowledge("needs a device, agent, episode or step id", field="provenance", index=index)


def validate_episode(episode: EpisodeRecord, index: int | None = None) -> None:
    _text(episode.device_id, "device_id", index)
    _text(episode.agent_id, "agent_id", index, empty=True)
    _text(episode.key, "key", index)
    _text(episode.text, "text", index, MAX_TEXT)
    if not episode.text.strip():
        raise InvalidKnowledge("must not be blank", field="text", index=index)
    vector = episode.embedding
    finite = all(isinstance(x, float | int) and math.isfinite(x) for x in vector)
    if len(vector) != EMBEDDING_DIM or not finite:
        raise InvalidKnowledge(f"must be {EMBEDDING_DIM} finite numbers", field="embedding", index=index)
    if not any(vector):
        raise InvalidKnowledge("must not be all zeros", field="embedding", index=index)
    utc(episode.at, "at", index)
    if not isinstance(episode.importance, float | int) or not 0.0 <= episode.importance <= 1.0:
        raise InvalidKnowledge("must be 0..1", field="importance", index=index)
    step = episode.step
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= INT64_MAX:
        raise InvalidKnowledge("must be an integer 0..2^63-1", field="step", index=index)


def validate_episodes(episodes: Sequence[EpisodeRecord]) -> None:
    if len(episodes) > MAX_BATCH:
        raise InvalidKnowledge(f"a batch holds at most {MAX_BATCH} items; split it")
    for i, episode in enumerate(episodes):
        validate_episode(episode, i)


def validate_batch(entities: Sequence[Entity], facts: Sequence[Fact]) -> None:
    if len(entities) + len(facts) > MAX_BATCH:
        raise InvalidKnowledge(f"a batch holds at most {MAX_BATCH} items; split it")
    for i, entity in enumerate(entities):
        validate_entity(entity, i)
    for i, fact in enumerate(facts):
        validate_fact(fact, i)


def plan(facts: Sequence[Fact]) -> list[list[Fact]]:
    """The order a batch is written in, one UNWIND per group: first every many-valued fact, then the
    functional ones in rounds holding at most one fact per (subject, predicate), by ``valid_from``, so
    each round's contradiction checks see the earlier rounds' writes. Duplicates (same id) are dropped."""
    seen: set[str] = set()
    many: list[Fact] = []
    functional: list[list[Fact]] = []
    depth: dict[tuple[str, str], int] = {}
    for fact in sorted(facts, key=lambda f: utc(f.valid_from)):
        if fact.id in seen:
            continue
        seen.add(fact.id)
        if not fact.functional:
            many.append(fact)
            continue
        n = depth.get((fact.subject, fact.predicate), 0)
        depth[(fact.subject, fact.predicate)] = n + 1
        if n == len(functional):
            functional.append([])
        functional[n].append(fact)
    return [group for group in [many, *functional] if group]
