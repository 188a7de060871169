"""Consolidation ("dreamer"): clusters of L3 episodes from the whole fleet become L4 facts.

One run: take the pending episodes (oldest first, at most ``batch``), cluster them by embedding
(``clusters``: across devices), ask the brain for each cluster's facts (``abstraction``: grammar-
constrained JSON, checked), resolve the names to entities (an existing entity whose name or id is the
name, else a new one), then write everything in ONE transaction (``KnowledgeGraph.consolidate``):
the facts, their ``ABSTRACTED_FROM`` links, the episodes marked consolidated, the run's record. A run
that fails anywhere writes nothing; the next run starts again from what is still pending.

Idempotent and resumable: the run id is a hash of the episode ids the run takes, and the model
decodes greedily, so a run repeated after a crash has the same id and writes the same facts (fact ids
are hashes of content and provenance); episodes already taken are no longer pending, so a second run
finds nothing to do. Given a ``run_id`` that is already recorded, ``run`` returns that run's report
without doing anything.

What becomes of an episode: in a cluster the model made facts of: *consolidated* (linked from the
facts, pruned at its edge); in a cluster the model made no valid fact of: *settled* (never retried,
left in L3 at the edge); alone (no neighbour at the similarity threshold) for longer than
``settle_after``: settled too; otherwise it stays pending and is clustered again next run.

Each fact's provenance is the cluster's centre episode (its device, agent and episode id); the
``ABSTRACTED_FROM`` links name every episode of the cluster. Facts are written non-functional: an
abstraction from a small model is evidence, and must not close a fact a device stated.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from edgehub.llm import Brain, ModelGate

from .abstraction import Abstraction, Statement, abstract, normal, slug
from .clusters import Cluster, cluster_episodes, digest
from .errors import DreamerError, InvalidKnowledge
from .graph import KnowledgeGraph
from .model import (
    DreamPlan,
    DreamRun,
    Entity,
    EpisodeRecord,
    Fact,
    Provenance,
    validate_entity,
    validate_fact,
)


@dataclass(frozen=True, slots=True)
class DreamReport:
    """What one consolidation run did."""

    run_id: str
    """The run's id ("" when there was nothing to write)."""
    clusters: int
    """Clusters the model was asked about."""
    facts_written: int
    """New facts in the graph (a fact the graph already had is not counted)."""
    episodes_consolidated: int
    prune: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """device id -> keys of its episodes this run consolidated: what the edges may prune."""
    rejected: tuple[tuple[str, str], ...] = ()
    """(cluster id, reason) for each fact dropped, and each cluster that gave no fact."""
    episodes_considered: int = 0
    """Pending episodes the run looked at."""
    episodes_settled: int = 0
    """Episodes taken without a fact (see the module docstring); they stay at their edge."""
    recorded: bool = False
    """The run id had already been run: this is its record, nothing was done now."""


def run_id_for(episode_ids: list[str]) -> str:
    """``dream-`` + 16 hex digits of the sha256 of the sorted episode ids."""
    return "dream-" + digest(episode_ids)


class Dreamer:
    """The consolidation job over one graph and one brain (calls serialised through a ``ModelGate``)."""

    def __init__(
        self,
        graph: KnowledgeGraph,
        brain: Brain | ModelGate,
        *,
        similarity: float = 0.5,
        min_cluster: int = 2,
        max_cluster: int = 8,
        batch: int = 1000,
        max_facts: int = 5,
        max_tokens: int = 256,
        settle_after: timedelta = timedelta(days=7),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if not 0.0 < similarity <= 1.0 or not 1 <= min_cluster <= max_cluster:
            raise ValueError("need 0 < similarity <= 1 and 1 <= min_cluster <= max_cluster")
        self.graph = graph
        self.model = brain if isinstance(brain, ModelGate) else ModelGate(brain)
        self.similarity = similarity
        self.min_cluster = min_cluster
        self.max_cluster = max_cluster
        self.batch = batch
        self.max_facts = max_facts
        self.max_tokens = max_tokens
        self.settle_after = settle_after
        self.clock = clock
        self._stopping = False

    def stop(self) -> None:
        """Make a run in progress give up before its next cluster (writing nothing)."""
        self._stopping = True

    async def run(self, run_id: str | None = None) -> DreamReport:
        """One run (see the module docstring). ``run_id`` None: derived from the episodes taken; one
        already recorded: its report, nothing done. Raises ConsolidationConflict, BatchRejected,
        GraphUnavailable or DreamerError, in every case having written nothing."""
        if run_id is not None and (done := await self.graph.dream_run(run_id)) is not None:
            return await self._recorded(done)
        episodes = await self.graph.pending_episodes(self.batch)
        clusters = cluster_episodes(
            episodes, similarity=self.similarity, min_cluster=self.min_cluster, max_cluster=self.max_cluster
        )
        builder = _PlanBuilder(clustered={e.id for c in clusters for e in c.episodes})
        for cluster in clusters:
            if self._stopping:
                raise DreamerError("consolidation stopped before it finished; nothing was written")
            ask = functools.partial(
                abstract, self.model.brain, cluster, max_facts=self.max_facts, max_tokens=self.max_tokens
            )
            try:
                found = await self.model.call(ask)
            except ValueError as exc:  # even the centre episode and the answer exceed the context
                raise DreamerError(f"cluster {cluster.id}: {exc}; raise dreamer.n_ctx") from None
            await self._add(builder, cluster, found)
        self._settle_lonely(builder, episodes)
        return await self._write(builder, run_id, len(clusters), len(episodes))

    async def _add(self, builder: _PlanBuilder, cluster: Cluster, found: Abstraction) -> None:
        for reason in found.rejected:
            builder.rejected.append((cluster.id, reason))
        facts = []
        for statement in found.statements:
            try:
                facts.append(await self._fact(builder, statement, found.episodes))
            except InvalidKnowledge as exc:
                builder.rejected.append((cluster.id, f"{statement.subject} {statement.predicate}: {exc}"))
        if not facts:
            reason = "the model stated no valid fact; its episodes stay in L3 at their edges"
            builder.rejected.append((cluster.id, reason))
            for episode in found.episodes:
                builder.settled[episode.id] = f"{cluster.id}: no fact"
            return
        sources = tuple(e.id for e in found.episodes)
        for fact in facts:
            builder.sources.setdefault(fact.id, sources)
            builder.facts.setdefault(fact.id, fact)
        builder.consolidated.extend(found.episodes)

    async def _fact(self, builder: _PlanBuilder, s: Statement, episodes: tuple[EpisodeRecord, ...]) -> Fact:
        centre = episodes[0]
        subject = await self._entity(builder, s.subject)
        obj = await self._entity(builder, s.object) if s.object is not None else None
        fact = Fact(
            subject=subject.id,
            predicate=s.predicate,
            valid_from=min(e.at for e in episodes),
            provenance=Provenance(centre.device_id, centre.agent_id, episode_id=centre.id),
            object=obj.id if obj is not None else None,
            value=s.value,
            functional=False,
        )
        validate_fact(fact)
        return fact

    async def _entity(self, builder: _PlanBuilder, name: str) -> Entity:
        """The entity ``name`` means: one the graph has (by id, or by a name or id equal to it up to
        case and punctuation), else a new one with the name's slug as id."""
        key = normal(name)
        if key not in builder.entities:
            entity = await self.graph.entity(slug(name))
            if entity is None:
                matches = await self.graph.lookup(name, limit=5)
                entity = next((e for e in matches if key in (normal(e.name), normal(e.id))), None)
            if entity is None:
                entity = Entity(slug(name), name, "thing")
                validate_entity(entity)
                builder.new_entities.add(entity.id)
            builder.entities[key] = entity
        return builder.entities[key]

    def _settle_lonely(self, builder: _PlanBuilder, episodes: list[EpisodeRecord]) -> None:
        """Episodes with no neighbour for longer than ``settle_after`` leave the pending set (so they
        cannot crowd out new ones); they stay in L3 at their edges."""
        taken = {e.id for e in builder.consolidated} | set(builder.settled)
        in_clusters = builder.clustered
        cutoff = self.clock() - self.settle_after
        for episode in episodes:
            if episode.id not in taken and episode.id not in in_clusters and episode.at < cutoff:
                builder.settled[episode.id] = f"no similar episode within {self.settle_after.days} days"

    async def _write(
        self, builder: _PlanBuilder, run_id: str | None, clusters: int, considered: int
    ) -> DreamReport:
        consolidated = tuple(e.id for e in builder.consolidated)
        taken = [*consolidated, *builder.settled]
        rejected = tuple(builder.rejected)
        if not taken:
            return DreamReport(
                run_id or "", clusters, 0, 0, rejected=rejected, episodes_considered=considered
            )
        run_id = run_id or run_id_for(taken)
        plan = DreamPlan(
            run_id=run_id,
            entities=tuple(e for e in builder.entities.values() if e.id in builder.new_entities),
            facts=tuple(builder.facts.values()),
            sources=dict(builder.sources),
            consolidated=consolidated,
            settled=dict(builder.settled),
            clusters=clusters,
            rejected=rejected,
        )
        result = await self.graph.consolidate(plan, recorded_at=self.clock())
        prune: dict[str, list[str]] = {}
        for episode in builder.consolidated:
            prune.setdefault(episode.device_id, []).append(episode.key)
        return DreamReport(
            run_id,
            clusters,
            result.created,
            len(consolidated),
            {device: tuple(sorted(keys)) for device, keys in sorted(prune.items())},
            rejected,
            considered,
            len(builder.settled),
        )

    async def _recorded(self, run: DreamRun) -> DreamReport:
        prune = await self.graph.episodes_to_prune(run.id)
        return DreamReport(
            run.id,
            run.clusters,
            run.facts,
            run.episodes,
            {device: tuple(keys) for device, keys in prune.items()},
            run.rejected,
            0,
            run.settled,
            recorded=True,
        )


@dataclass
class _PlanBuilder:
    """What a run has decided so far (nothing is written until the end)."""

    facts: dict[str, Fact] = field(default_factory=dict)
    sources: dict[str, tuple[str, ...]] = field(default_factory=dict)
    entities: dict[str, Entity] = field(default_factory=dict)
    """normal(name) -> entity (resolved once per run)."""
    new_entities: set[str] = field(default_factory=set)
    consolidated: list[EpisodeRecord] = field(default_factory=list)
    settled: dict[str, str] = field(default_factory=dict)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    clustered: set[str] = field(default_factory=set)
    """Ids of episodes in a cluster (even those that did not fit the prompt): not lonely."""
