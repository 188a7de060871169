"""A real Neo4j Community server (hub/neo4j-launcher) for the whole test session, and a clean, migrated
knowledge graph for each test. tests/integration/conftest.py imports the fixtures (``neo4j_server``,
``graph``) once, so every module shares the one server.

One server per session: its JVM takes 10-30 s to start on two cores (a test needing its own server
starts one with ``Neo4jServer.start``). Community has one user database, so tests share it and
``reset`` empties it (data, constraints, indexes) before each one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from edgehub.hub.knowledge import KnowledgeGraph, Neo4jServer


@pytest_asyncio.fixture(name="neo4j_server", scope="session", loop_scope="session")
async def neo4j_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Neo4jServer]:
    server = await Neo4jServer.start(Path(tmp_path_factory.mktemp("neo4j")))
    yield server
    await server.stop()


async def reset(graph: KnowledgeGraph) -> None:
    """Empty the database: every node and relationship, every constraint and index but the built-in
    token lookups."""
    async with graph.driver.session(database=graph.database) as session:
        await (
            await session.run("MATCH (n) CALL (n) { DETACH DELETE n } IN TRANSACTIONS OF 5000 ROWS")
        ).consume()
    for kind, query in (
        ("CONSTRAINT", "SHOW CONSTRAINTS YIELD name"),
        ("INDEX", "SHOW INDEXES YIELD name, type"),
    ):
        records = (await graph.driver.execute_query(query, database_=graph.database)).records
        for r in records:
            if kind == "INDEX" and r["type"] == "LOOKUP":
                continue
            await graph.driver.execute_query(f"DROP {kind} `{r['name']}` IF EXISTS", database_=graph.database)


async def connect(server: Neo4jServer) -> KnowledgeGraph:
    return await KnowledgeGraph.connect(server.uri, server.user, server.password)


@pytest.fixture(name="graph")
async def graph_fixture(neo4j_server: Neo4jServer) -> AsyncIterator[KnowledgeGraph]:
    """The session's graph, emptied and migrated to the latest schema."""
    g = await connect(neo4j_server)
    await reset(g)
    await g.migrate()
    yield g
    await g.close()
