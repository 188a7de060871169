"""``KnowledgeGraph``: the hub's L4 memory on Neo4j, through the official async driver.

Writes: ``ingest`` validates a batch of entities and facts, then writes it in ONE transaction (UNWIND,
MERGE on stable keys): all of it or nothing, and writing the same batch again changes nothing. A new
functional fact closes the validity of the current fact it contradicts (same subject and predicate,
another object) instead of deleting it. Reads: ``facts_about`` an entity, its ``neighbourhood`` to a
depth, ``multi_hop`` paths along predicates; each ``as_of`` a valid time and a transaction time.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TypeVar

import neo4j
from neo4j import AsyncDriver, AsyncGraphDatabase, AsyncManagedTransaction
from neo4j import exceptions as nx

from . import cypher
from .errors import BatchRejected, ConsolidationConflict, GraphUnavailable, InvalidKnowledge, KnowledgeError
from .model import (
    MAX_ID,
    AsOf,
    Direction,
    DreamPlan,
    DreamRun,
    Entity,
    EpisodeRecord,
    Fact,
    GraphPath,
    Hop,
    IngestResult,
    Provenance,
    StoredFact,
    Subgraph,
    object_key,
    plan,
    utc,
    validate_batch,
    validate_episodes,
    validate_predicate,
)
from .schema import migrate

T = TypeVar("T")
MAX_DEPTH = 6
NOW = AsOf()
"""True now, as known now: the default of every query."""


def _time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text).astimezone(UTC)


def _required(text: str | None) -> datetime:
    t = _time(text)
    if t is None:
        raise KnowledgeError("a fact in the graph lacks a time it must have")
    return t


def _iso(t: datetime | None) -> str | None:
    return None if t is None else utc(t).isoformat(timespec="microseconds")


def _row(fact: Fact) -> dict[str, Any]:
    """A fact as UNWIND's parameter row (times as ISO strings; Cypher makes DateTimes of them)."""
    p = fact.provenance
    props = {
        "subject": fact.subject,
        "predicate": fact.predicate,
        "object": fact.object,
        "value": fact.value,
        "object_key": object_key(fact),
        "functional": fact.functional,
        "device_id": p.device_id or None,
        "agent_id": p.agent_id or None,
        "episode_id": p.episode_id or None,
        "step_id": p.step_id or None,
    }
    return {
        "id": fact.id,
        "props": props,
        "valid_from": _iso(fact.valid_from),
        "valid_to": _iso(fact.valid_to),
    }


def _stored(row: dict[str, Any]) -> StoredFact:
    fact = Fact(
        subject=row["subject"],
        predicate=row["predicate"],
        valid_from=_required(row["valid_from"]),
        provenance=Provenance(
            row.get("device_id") or "",
            row.get("agent_id") or "",
            row.get("episode_id") or "",
            row.get("step_id") or "",
        ),
        object=row.get("object"),
        value=row.get("value"),
        valid_to=_time(row.get("stated_valid_to")),
        functional=bool(row["functional"]),
    )
    return StoredFact(fact, row["id"], _required(row["recorded_at"]), _time(row.get("valid_to")))


def _episode_row(r: EpisodeRecord) -> dict[str, Any]:
    props = {
        "device_id": r.device_id,
        "agent_id": r.agent_id,
        "key": r.key,
        "text": r.text,
        "embedding": [float(x) for x in r.embedding],
        "importance": float(r.importance),
        "step": r.step,
    }
    return {"id": r.id, "props": props, "at": _iso(r.at)}


def _episode(row: dict[str, Any]) -> EpisodeRecord:
    return EpisodeRecord(
        device_id=row["device_id"],
        agent_id=row["agent_id"] or "",
        key=row["key"],
        text=row["text"],
        embedding=tuple(row["embedding"]),
        at=_required(row["at"]),
        importance=float(row["importance"]),
        step=int(row["step"]),
    )


def _dream_run(row: dict[str, Any]) -> DreamRun:
    rejected = tuple(tuple(r.split("\t", 1)) for r in row.get("rejected") or [])
    return DreamRun(
        id=row["id"],
        at=_required(row["at"]),
        clusters=int(row["clusters"]),
        facts=int(row["facts"]),
        episodes=int(row["episodes"]),
        settled=int(row["settled"]),
        rejected=tuple((r[0], r[-1]) for r in rejected),
        prune_sent=bool(row["prune_sent"]),
    )


def _entity(row: dict[str, Any]) -> Entity:
    return Entity(row["id"], row.get("name") or "", row.get("kind") or "thing")


def _translate(exc: Exception) -> KnowledgeError:
    """The driver's exceptions as ours: what happened, whether retrying may help."""
    if isinstance(exc, nx.AuthError):
        return GraphUnavailable(f"Neo4j refused the credentials: {exc.message}", retryable=False)
    if isinstance(exc, nx.ServiceUnavailable | nx.SessionExpired):
        return GraphUnavailable(f"Neo4j is unreachable: {exc}")
    if isinstance(exc, nx.Neo4jError):
        return BatchRejected(exc.message or str(exc), code=exc.code or "", retryable=exc.is_retryable())
    if isinstance(exc, nx.DriverError):
        return GraphUnavailable(f"Neo4j driver error: {exc}")
    return KnowledgeError(str(exc))


def _ingest_work(
    entities: Sequence[Entity], facts: Sequence[Fact], now: datetime
) -> Callable[[AsyncManagedTransaction], Awaitable[IngestResult]]:
    """The statements that write a validated batch, as a function of a transaction (so a caller can
    put them in a larger transaction)."""
    entity_rows = [{"id": e.id, "name": e.name or e.id, "kind": e.kind} for e in entities]
    declared = {e.id for e in entities}
    named = sorted(({f.subject for f in facts} | {f.object for f in facts if f.object}) - declared)
    groups = [
        (
            cypher.INGEST_FUNCTIONAL_FACTS if group[0].functional else cypher.INGEST_FACTS,
            [_row(f) for f in group],
        )
        for group in plan(facts)
    ]
    ingest_id = uuid.uuid4().hex

    async def work(tx: AsyncManagedTransaction) -> IngestResult:
        counts = {"entities": 0, "created": 0, "closed": 0, "superseded": 0}
        if entity_rows:
            record = await (await tx.run(cypher.UPSERT_ENTITIES, entities=entity_rows, now=now)).single()
            counts["entities"] = record["entities"] if record else 0
        if named:
            await (await tx.run(cypher.ENSURE_ENTITIES, ids=named, now=now)).consume()
        for query, rows in groups:
            record = await (await tx.run(query, facts=rows, now=now, ingest=ingest_id)).single()
            for key in ("created", "closed", "superseded"):
                counts[key] += int(record[key] or 0) if record else 0
        return IngestResult(**counts, ids=tuple(f.id for f in facts))

    return work


class KnowledgeGraph:
    """The L4 knowledge graph in one Neo4j database."""

    def __init__(self, driver: AsyncDriver, database: str = "neo4j") -> None:
        self.driver = driver
        self.database = database
        self._closed = False

    @classmethod
    async def connect(
        cls, uri: str, user: str, password: str, *, database: str = "neo4j", connect_timeout: float = 30
    ) -> KnowledgeGraph:
        """A driver for ``uri`` (``bolt://`` or ``neo4j://``), checked by one round trip; writes retry
        transient errors (deadlocks, leader changes) for up to ``connect_timeout`` seconds too."""
        driver = AsyncGraphDatabase.driver(
            uri,
            auth=(user, password),
            connection_timeout=connect_timeout,
            max_transaction_retry_time=connect_timeout,
            # "property does not exist yet" and the like: the server need not send what nobody reads
            notifications_min_severity="OFF",
        )
        try:
            await driver.verify_connectivity()
        except Exception as exc:
            await driver.close()
            raise _translate(exc) from exc
        return cls(driver, database)

    async def close(self) -> None:
        """Idempotent."""
        if not self._closed:
            self._closed = True
            await self.driver.close()

    async def __aenter__(self) -> KnowledgeGraph:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def migrate(self) -> list[int]:
        """Bring the schema up to date; returns the versions applied now."""
        try:
            return await migrate(self.driver, self.database)
        except (nx.Neo4jError, nx.DriverError) as exc:
            raise _translate(exc) from exc

    # -- writes ----------------------------------------------------------------------------------

    async def ingest(
        self,
        entities: Sequence[Entity] = (),
        facts: Sequence[Fact] = (),
        *,
        recorded_at: datetime | None = None,
    ) -> IngestResult:
        """Write a batch in one transaction. ``recorded_at`` (default now) is its transaction time.
        InvalidKnowledge before anything is sent; BatchRejected if Neo4j refuses any of it (nothing of
        the batch stays); GraphUnavailable if Neo4j cannot be reached."""
        validate_batch(entities, facts)
        now = utc(recorded_at or datetime.now(UTC), "recorded_at")
        return await self._write(_ingest_work(entities, facts, now))

    async def retract(self, ids: Sequence[str], *, recorded_at: datetime | None = None) -> int:
        """Stop believing these facts from ``recorded_at`` (default now) on; returns how many changed.
        They stay in the graph and in queries as known before that time."""
        now = utc(recorded_at or datetime.now(UTC), "recorded_at")

        async def work(tx: AsyncManagedTransaction) -> int:
            record = await (await tx.run(cypher.RETRACT, ids=list(ids), now=now)).single()
            return int(record["retracted"]) if record else 0

        return await self._write(work)

    # -- episodes and consolidation ------------------------------------------------------------

    async def add_episodes(self, records: Sequence[EpisodeRecord]) -> int:
        """Store replicated L3 episodes (one transaction; MERGE on ``EpisodeRecord.id``, so a resent
        episode changes nothing); returns how many were new. New episodes wait for consolidation."""
        validate_episodes(records)
        unique = list({r.id: r for r in reversed(records)}.values())[::-1]  # the first of each id
        rows = [_episode_row(r) for r in unique]
        if not rows:
            return 0
        now = datetime.now(UTC)

        async def work(tx: AsyncManagedTransaction) -> int:
            query = cypher.ADD_EPISODES
            record = await (await tx.run(query, episodes=rows, now=now, batch=uuid.uuid4().hex)).single()
            return int(record["created"]) if record else 0

        return await self._write(work)

    async def pending_episodes(self, limit: int) -> list[EpisodeRecord]:
        """Episodes no consolidation run has taken yet, oldest first."""
        _check_limit(limit)
        rows = await self._read(cypher.PENDING_EPISODES, AsOf(), limit=limit)
        return [_episode(e) for e in rows[0]["episodes"]] if rows else []

    async def consolidate(self, dream: DreamPlan, *, recorded_at: datetime | None = None) -> IngestResult:
        """Write one consolidation run in ONE transaction: its entities and facts (as ``ingest``), each
        fact's ``ABSTRACTED_FROM`` links, the episodes it consolidated or settled (no longer pending)
        and its ``DreamRun`` record. ConsolidationConflict if another run took any of its episodes
        first; BatchRejected if Neo4j refuses any of it (the run id already used, for one). Either way
        nothing of the run stays."""
        validate_batch(dream.entities, dream.facts)
        ids = {f.id for f in dream.facts}
        if set(dream.sources) - ids or ids - set(dream.sources):
            raise InvalidKnowledge("every fact needs its source episodes, and only those", field="sources")
        now = utc(recorded_at or datetime.now(UTC), "recorded_at")
        ingest = _ingest_work(dream.entities, dream.facts, now)
        taken = sorted(set(dream.consolidated) | set(dream.settled))
        links = [{"fact": f, "episodes": list(eps)} for f, eps in dream.sources.items()]
        settled = [{"id": e, "reason": why} for e, why in dream.settled.items()]
        run: dict[str, Any] = {
            "run": dream.run_id,
            "now": now,
            "clusters": dream.clusters,
            "episodes": len(dream.consolidated),
            "settled": len(settled),
            "rejected": [f"{cluster}\t{reason}" for cluster, reason in dream.rejected],
        }

        async def work(tx: AsyncManagedTransaction) -> IngestResult:
            await (await tx.run(cypher.LOCK_EPISODES, ids=taken, run=dream.run_id)).consume()
            record = await (await tx.run(cypher.STILL_PENDING, ids=taken)).single()
            gone = sorted(set(taken) - set(record["pending"] if record else []))
            if gone:
                raise ConsolidationConflict(dream.run_id, gone)
            result = await ingest(tx)
            await (await tx.run(cypher.LINK_SOURCES, links=links)).consume()
            mark = {"ids": list(dream.consolidated), "run": dream.run_id, "now": now}
            await (await tx.run(cypher.MARK_CONSOLIDATED, mark)).consume()
            await (await tx.run(cypher.MARK_SETTLED, settled=settled, run=dream.run_id)).consume()
            await (await tx.run(cypher.RECORD_RUN, **run, facts=result.created)).consume()
            return result

        return await self._write(work)

    async def dream_run(self, run_id: str) -> DreamRun | None:
        """The recorded consolidation run ``run_id``, if it was written."""
        rows = await self._read(cypher.DREAM_RUN, AsOf(), run=run_id)
        return _dream_run(rows[0]["run"]) if rows else None

    async def episodes_to_prune(self, run_id: str) -> dict[str, list[str]]:
        """device id -> the keys of that device's episodes run ``run_id`` consolidated."""
        rows = await self._read(cypher.EPISODES_TO_PRUNE, AsOf(), run=run_id)
        return {r["device"]: list(r["keys"]) for r in rows}

    async def unsent_prunes(self) -> list[str]:
        """Runs that consolidated episodes whose edges were not yet told to prune them, oldest first."""
        rows = await self._read(cypher.UNSENT_PRUNES, AsOf())
        return list(rows[0]["runs"]) if rows else []

    async def mark_prune_sent(self, run_id: str) -> None:
        now = datetime.now(UTC)

        async def work(tx: AsyncManagedTransaction) -> None:
            await (await tx.run(cypher.MARK_PRUNE_SENT, run=run_id, now=now)).consume()

        await self._write(work)

    async def _write(self, work: Callable[[AsyncManagedTransaction], Awaitable[T]]) -> T:
        try:
            async with self.driver.session(database=self.database) as session:
                return await session.execute_write(work)
        except (nx.Neo4jError, nx.DriverError) as exc:
            raise _translate(exc) from exc

    # -- reads -----------------------------------------------------------------------------------

    async def _read(self, query: str, as_of: AsOf, **params: Any) -> list[dict[str, Any]]:
        params["valid_at"] = utc(as_of.valid_at or datetime.now(UTC), "valid_at")
        params["known_at"] = None if as_of.known_at is None else utc(as_of.known_at, "known_at")
        try:
            result = await self.driver.execute_query(
                query, params, database_=self.database, routing_=neo4j.RoutingControl.READ
            )
        except (nx.Neo4jError, nx.DriverError) as exc:
            raise _translate(exc) from exc
        return [dict(r) for r in result.records]

    async def entity(self, entity_id: str) -> Entity | None:
        rows = await self._read(
            f"MATCH (e:Entity {{id: $id}}) RETURN {cypher.ENTITY} AS e", AsOf(), id=entity_id
        )
        return _entity(rows[0]["e"]) if rows else None

    async def lookup(self, text: str, *, limit: int = 5) -> list[Entity]:
        """Entities ``text`` names: the one whose id it is, else the best matches of its words against
        names and ids (case-insensitive, best first). ``[]``: nothing matches."""
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_ID:
            raise InvalidKnowledge(f"must be 1 to {MAX_ID} characters", field="text")
        _check_limit(limit)
        words = cypher.lucene_words(text)
        if not words:
            return []
        rows = await self._read(cypher.LOOKUP, AsOf(), text=text, words=words, limit=limit)
        return [_entity(e) for e in rows[0]["entities"]] if rows else []

    async def facts_about(
        self,
        entity_id: str,
        *,
        predicate: str | None = None,
        direction: Direction = "both",
        as_of: AsOf = NOW,
        history: bool = False,
        limit: int = 100,
    ) -> list[StoredFact]:
        """Facts whose subject (``out``), object (``in``) or either is the entity, true at
        ``as_of.valid_at`` (``history``: at any time) as known at ``as_of.known_at``."""
        if predicate is not None:
            validate_predicate(predicate)
        _check_limit(limit)
        latest = as_of.known_at is None
        query = cypher.facts_about(direction, latest, history)
        rows = await self._read(query, as_of, id=entity_id, predicate=predicate, limit=limit)
        return [_stored(f) for f in rows[0]["facts"]]

    async def neighbourhood(
        self,
        entity_id: str,
        *,
        depth: int = 2,
        as_of: AsOf = NOW,
        limit: int = 100,
        fact_limit: int = 50,
    ) -> Subgraph:
        """Entities within ``depth`` relations of the entity (at most ``limit`` besides it), the
        relations among them and their literal facts (at most ``fact_limit`` per entity)."""
        if not isinstance(depth, int) or not 1 <= depth <= MAX_DEPTH:
            raise InvalidKnowledge(f"must be 1..{MAX_DEPTH}", field="depth")
        _check_limit(limit)
        _check_limit(fact_limit)
        query = cypher.neighbourhood(depth, as_of.known_at is None)
        rows = await self._read(query, as_of, id=entity_id, limit=limit + 1, fact_limit=fact_limit + 1)
        if not rows:
            return Subgraph((), ())
        entities = [_entity(e) for e in rows[0]["entities"]]
        per_entity = rows[0]["facts"]
        truncated = len(entities) > limit + 1 or any(len(fs) > fact_limit for fs in per_entity)
        facts = {f["id"]: _stored(f) for fs in per_entity for f in fs[:fact_limit]}
        return Subgraph(tuple(entities[: limit + 1]), tuple(facts.values()), truncated)

    async def multi_hop(
        self, start: str, hops: Sequence[Hop], *, as_of: AsOf = NOW, limit: int = 100
    ) -> list[GraphPath]:
        """Paths from ``start`` along ``hops`` in order (e.g. ``located_in`` then ``part_of``), each
        relation true at ``as_of.valid_at`` as known at ``as_of.known_at``."""
        if not 1 <= len(hops) <= MAX_DEPTH:
            raise InvalidKnowledge(f"1..{MAX_DEPTH} hops", field="hops")
        for hop in hops:
            if hop.predicate is not None:
                validate_predicate(hop.predicate)
            if hop.direction not in ("out", "in", "both"):
                raise InvalidKnowledge(f"{hop.direction!r} is not out, in or both", field="direction")
        _check_limit(limit)
        query = cypher.multi_hop(hops, as_of.known_at is None)
        predicates = {f"p{i}": hop.predicate for i, hop in enumerate(hops)}
        rows = await self._read(query, as_of, start=start, limit=limit, **predicates)
        return [
            GraphPath(tuple(_entity(e) for e in p["entities"]), tuple(_stored(f) for f in p["facts"]))
            for p in rows[0]["paths"]
        ]


def _check_limit(limit: int) -> None:
    if not isinstance(limit, int) or not 1 <= limit <= 10_000:
        raise InvalidKnowledge("must be 1..10000", field="limit")
