"""The embedded Neo4j launcher and the hub's knowledge service: real JVMs, real kills."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edgehub.hub.config import Neo4jConfig
from edgehub.hub.knowledge import (
    Entity,
    Fact,
    GraphUnavailable,
    KnowledgeService,
    Neo4jLaunchError,
    Neo4jServer,
    Provenance,
)
from tests.harness.wait import eventually

T0 = datetime(2026, 3, 1, tzinfo=UTC)
FACT = Fact("robot-7", "located_in", T0, Provenance(device_id="edge-1"), object="hall-a")

OWNER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from edgehub.hub.knowledge import Neo4jServer

    async def main() -> None:
        server = await Neo4jServer.start(Path(sys.argv[1]))
        print(server.process.pid, flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie has exited: it only waits for its parent to reap it
    return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


async def test_the_embedded_neo4j_shuts_down_cleanly_when_its_owner_is_killed(tmp_path: Path) -> None:
    owner = await asyncio.create_subprocess_exec(
        sys.executable, "-c", OWNER, str(tmp_path / "neo4j"), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert owner.stdout is not None
        jvm = int(await asyncio.wait_for(owner.stdout.readline(), 300))
        assert alive(jvm)
        owner.kill()
        await owner.wait()
        await eventually(lambda: not alive(jvm), within=60, what="the JVM to exit after its owner died")
    finally:
        if owner.returncode is None:
            owner.kill()
            await owner.wait()
    log = (tmp_path / "neo4j" / "launcher.log").read_text()
    assert "edgehub-neo4j stopped" in log  # SIGTERM ran the shutdown hook: a clean Neo4j shutdown


async def test_the_knowledge_service_keeps_its_data_across_restarts_and_reports_a_crash(
    tmp_path: Path,
) -> None:
    config = Neo4jConfig(uri=None, embedded_data=tmp_path / "neo4j", password="first-password")
    async with KnowledgeService(config) as service:
        assert service.uri.startswith("bolt://127.0.0.1:")
        await service.graph.ingest([Entity("robot-7", "Robot 7", "robot")], [FACT])

    # the same data dir with another password: the launcher applies the configured one
    again = KnowledgeService(config.model_copy(update={"password": "second-password"}))
    await again.start()
    try:
        assert [s.fact for s in await again.graph.facts_about("robot-7")] == [FACT]
        run = asyncio.create_task(again.run())
        assert again.server is not None
        assert again.server.process is not None
        os.kill(again.server.process.pid, signal.SIGKILL)
        with pytest.raises(Neo4jLaunchError, match="exited"):
            await asyncio.wait_for(run, 30)
    finally:
        await again.shutdown()
        await again.shutdown()


async def test_the_knowledge_service_uses_an_operators_neo4j_when_a_uri_is_set(
    neo4j_server: Neo4jServer,
) -> None:
    config = Neo4jConfig(uri=neo4j_server.uri, user="neo4j", password=neo4j_server.password)
    service = KnowledgeService(config)
    await service.start()
    try:
        assert service.server is None
        assert service.uri == neo4j_server.uri
        assert await service.graph.entity("nobody") is None
        run = asyncio.create_task(service.run())
        await asyncio.sleep(0.1)
        assert not run.done()
    finally:
        await service.shutdown()
    await asyncio.wait_for(run, 5)
    with pytest.raises(GraphUnavailable, match="password"):
        await KnowledgeService(Neo4jConfig(uri=neo4j_server.uri, password=None)).start()
