"""``KnowledgeService``: the L4 graph as a hub component, from the ``[neo4j]`` config section.

With a ``uri`` it connects to the operator's Neo4j; without one it starts the embedded Neo4j Community
launcher (``Neo4jServer``) in ``embedded_data`` first. Either way it brings the schema up to date, then
``graph`` is ready. ``run()`` watches the embedded JVM (a crash of it is the hub's error, not a silent
loss of L4); ``shutdown()`` closes the driver and stops the JVM.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from ..config import Neo4jConfig
from .embedded import Neo4jServer
from .errors import GraphUnavailable, Neo4jLaunchError
from .graph import KnowledgeGraph


class KnowledgeService:
    """Opens the knowledge graph the config names; lifecycle ``start``/``run``/``shutdown``."""

    def __init__(self, config: Neo4jConfig) -> None:
        self.config = config
        self.server: Neo4jServer | None = None
        self._graph: KnowledgeGraph | None = None
        self._stop = asyncio.Event()

    @property
    def graph(self) -> KnowledgeGraph:
        if self._graph is None:
            raise GraphUnavailable("the knowledge service has not started", retryable=False)
        return self._graph

    @property
    def uri(self) -> str:
        """Where the graph is (the embedded server's Bolt address, or the configured uri)."""
        return self.server.uri if self.server else self.config.uri or ""

    async def start(self) -> KnowledgeGraph:
        cfg = self.config
        if cfg.uri is None:
            self.server = await Neo4jServer.start(
                cfg.embedded_data,
                port=cfg.embedded_port,
                password=cfg.password,
                launcher_dir=cfg.launcher_dir,
                heap_mb=cfg.embedded_heap_mb,
                pagecache_mb=cfg.embedded_pagecache_mb,
            )
            uri, user, password = self.server.uri, self.server.user, self.server.password
        elif not cfg.password:
            raise GraphUnavailable("[neo4j] uri is set but no password (NEO4J_PASSWORD)", retryable=False)
        else:
            uri, user, password = cfg.uri, cfg.user, cfg.password
        try:
            self._graph = await KnowledgeGraph.connect(uri, user, password, database=cfg.database)
            await self._graph.migrate()
        except BaseException:
            await self.shutdown()
            raise
        return self._graph

    async def run(self) -> None:
        """Until ``shutdown``; Neo4jLaunchError if the embedded Neo4j exits on its own."""
        if self.server is None or self.server.process is None:
            await self._stop.wait()
            return
        exited = asyncio.ensure_future(self.server.process.wait())
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({exited, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if not self._stop.is_set():
            raise Neo4jLaunchError(
                f"the embedded Neo4j exited with status {exited.result()}", log=self.server.log_path
            )
        exited.cancel()

    async def shutdown(self) -> None:
        """Idempotent."""
        self._stop.set()
        if self._graph is not None:
            await self._graph.close()
        if self.server is not None:
            await self.server.stop()

    async def __aenter__(self) -> KnowledgeService:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.shutdown()
