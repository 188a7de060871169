"""The hub's L4 memory: a bi-temporal knowledge graph with provenance on Neo4j.

``model`` (entities, facts, provenance, fact ids, validation), ``graph`` (``KnowledgeGraph``: batched
idempotent writes, contradiction handling, as-of queries), ``migrations`` (the schema, appended),
``server`` (``Neo4jServer``: the embedded Neo4j Community launcher for tests and local runs),
``service`` (``KnowledgeService``: what the hub daemon runs from its ``[neo4j]`` config);
consolidation of L3 episodes into facts: ``clusters``, ``abstraction``, ``dreamer`` (``Dreamer``) and
``dreamer_service`` (``DreamerService``, from the ``[dreamer]`` config).
See docs/knowledge.md.
"""

from .dreamer import Dreamer, DreamReport
from .dreamer_service import DreamerService
from .embedded import Neo4jServer, default_launcher_dir
from .errors import (
    BatchRejected,
    ConsolidationConflict,
    DreamerError,
    GraphUnavailable,
    InvalidKnowledge,
    KnowledgeError,
    Neo4jLaunchError,
    SchemaError,
)
from .graph import KnowledgeGraph
from .model import (
    AsOf,
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
    fact_id,
)
from .schema import LATEST, MIGRATIONS, Migration, migrate
from .service import KnowledgeService

__all__ = [
    "LATEST",
    "MIGRATIONS",
    "AsOf",
    "BatchRejected",
    "ConsolidationConflict",
    "DreamPlan",
    "DreamReport",
    "DreamRun",
    "Dreamer",
    "DreamerError",
    "DreamerService",
    "Entity",
    "EpisodeRecord",
    "Fact",
    "GraphPath",
    "GraphUnavailable",
    "Hop",
    "IngestResult",
    "InvalidKnowledge",
    "KnowledgeError",
    "KnowledgeGraph",
    "KnowledgeService",
    "Migration",
    "Neo4jLaunchError",
    "Neo4jServer",
    "Provenance",
    "SchemaError",
    "StoredFact",
    "Subgraph",
    "default_launcher_dir",
    "fact_id",
    "migrate",
]
