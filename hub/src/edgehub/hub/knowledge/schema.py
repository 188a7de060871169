"""The graph's schema as appended, versioned migrations (constraints and indexes).

Each migration runs once per database: its statements (all ``IF NOT EXISTS``, so a run interrupted
between a statement and its record repeats harmlessly), then a ``(:Migration {version, name,
checksum, applied_at})`` node records it. Re-running is a no-op. Never edit an applied migration:
append a new one (``migrate`` refuses a graph whose recorded checksum differs from the code's, and a
graph migrated by newer code).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

from neo4j import AsyncDriver

from .errors import SchemaError


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    """1, 2, ... in order, no gaps."""
    name: str
    statements: tuple[str, ...]
    """Schema statements, each idempotent (``IF NOT EXISTS``)."""

    @property
    def checksum(self) -> str:
        return hashlib.sha256("\n".join(self.statements).encode()).hexdigest()[:16]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "unique keys",
        (
            "CREATE CONSTRAINT entity_id IF NOT EXISTS FOR (e:Entity) REQUIRE e.id IS UNIQUE",
            "CREATE CONSTRAINT fact_id IF NOT EXISTS FOR (f:Fact) REQUIRE f.id IS UNIQUE",
            "CREATE CONSTRAINT migration_version IF NOT EXISTS FOR (m:Migration) REQUIRE m.version IS UNIQUE",
        ),
    ),
    Migration(
        2,
        "lookup indexes: contradiction checks, provenance, kinds",
        (
            "CREATE INDEX fact_subject_predicate IF NOT EXISTS FOR (f:Fact) ON (f.subject, f.predicate)",
            "CREATE INDEX fact_episode IF NOT EXISTS FOR (f:Fact) ON (f.episode_id)",
            "CREATE INDEX fact_device IF NOT EXISTS FOR (f:Fact) ON (f.device_id)",
            "CREATE INDEX entity_kind IF NOT EXISTS FOR (e:Entity) ON (e.kind)",
        ),
    ),
    Migration(
        3,
        "entity search by name words (the agents' knowledge tool)",
        ("CREATE FULLTEXT INDEX entity_names IF NOT EXISTS FOR (e:Entity) ON EACH [e.name, e.id]",),
    ),
    Migration(
        4,
        "episodes (L3 replicated) and consolidation runs",
        (
            "CREATE CONSTRAINT episode_id IF NOT EXISTS FOR (e:Episode) REQUIRE e.id IS UNIQUE",
            "CREATE INDEX episode_consolidated_run IF NOT EXISTS FOR (e:Episode) ON (e.consolidated_run)",
            "CREATE INDEX episode_device IF NOT EXISTS FOR (e:Episode) ON (e.device_id)",
            "CREATE CONSTRAINT dream_run_id IF NOT EXISTS FOR (r:DreamRun) REQUIRE r.id IS UNIQUE",
        ),
    ),
)

LATEST = MIGRATIONS[-1].version


async def applied(driver: AsyncDriver, database: str) -> dict[int, str]:
    """Recorded migrations: version -> checksum."""
    result = await driver.execute_query(
        "MATCH (m:Migration) RETURN m.version AS version, m.checksum AS checksum", database_=database
    )
    return {int(r["version"]): str(r["checksum"]) for r in result.records}


async def migrate(
    driver: AsyncDriver, database: str = "neo4j", migrations: tuple[Migration, ...] = MIGRATIONS
) -> list[int]:
    """Apply the migrations this database has not recorded; returns their versions (empty: up to date)."""
    done = await applied(driver, database)
    known = {m.version: m for m in migrations}
    if done and max(done) > max(known):
        raise SchemaError(
            f"the graph is at schema version {max(done)}, newer than this hub's {max(known)}: upgrade the hub"
        )
    for version, checksum in sorted(done.items()):
        if known[version].checksum != checksum:
            raise SchemaError(
                f"migration {version} ({known[version].name}) differs from the one this graph recorded: "
                "applied migrations must not change; append a new one"
            )
    ran = []
    for m in migrations:
        if m.version in done:
            continue
        for statement in m.statements:
            await driver.execute_query(statement, database_=database)
        await driver.execute_query("CALL db.awaitIndexes(300)", database_=database)
        await driver.execute_query(
            "MERGE (m:Migration {version: $version}) "
            "ON CREATE SET m.name = $name, m.checksum = $checksum, m.applied_at = $now",
            version=m.version,
            name=m.name,
            checksum=m.checksum,
            now=datetime.now(UTC),
            database_=database,
        )
        ran.append(m.version)
    return ran
