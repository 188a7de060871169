"""``DreamerService``: consolidation as a hub component, from the ``[dreamer]`` config section.

It runs the ``Dreamer`` every ``interval_s`` and on demand (``consolidate_now``: the API's
``Consolidate``, ``edgehub knowledge consolidate``), one run at a time, then tells each edge which of
its episodes a run consolidated: a ``PruneEpisodes`` command per device (in chunks of 500 keys), with
command ids derived from the run, so a resend is deduplicated by JetStream and is harmless at the
edge anyway. A run whose commands could not be queued (NATS down, hub crash after the write) is
recorded as unsent in the graph and sent again after the next run or interval.

The model (the same llama.cpp brain as the edges', ``edgehub.llm``) is checked at ``start`` and loaded
at the first run, so a hub that never consolidates never spends the memory. Lifecycle:
``start``, ``run(stop)`` (returns when ``stop`` is set or on ``shutdown``), idempotent ``shutdown``
(a run in progress gives up before its next cluster, writing nothing), ``async with``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Iterator
from datetime import timedelta
from types import TracebackType

from nats.js import JetStreamContext

from edgehub.llm import Brain, ModelFileError, ModelGate, check_model_file
from edgehub.protocol.v1 import commands_pb2
from edgehub.sync.commands import new_command, send_command

from ..config import DreamerConfig
from .dreamer import Dreamer, DreamReport
from .errors import DreamerError
from .graph import KnowledgeGraph

log = logging.getLogger("edgehub.hub.dreamer")
PRUNE_CHUNK = 500
"""Keys per PruneEpisodes command (500 keys of at most 512 characters stay far below 1 MiB)."""


def prune_commands(
    run_id: str, prune: dict[str, list[str]], issued_by: str
) -> Iterator[commands_pb2.Command]:
    """The PruneEpisodes commands for a run: per device, chunks of ``PRUNE_CHUNK`` keys, each with a
    command id that depends only on the run, the device and the chunk."""
    for device, keys in sorted(prune.items()):
        for start in range(0, len(keys), PRUNE_CHUNK):
            cmd = new_command(device, issued_by)
            name = f"{run_id}\n{device}\n{start}".encode()
            cmd.command_id = f"cmd-prune-{hashlib.sha256(name).hexdigest()[:32]}"
            cmd.prune_episodes.run_id = run_id
            cmd.prune_episodes.keys.extend(keys[start : start + PRUNE_CHUNK])
            yield cmd


class DreamerService:
    """Runs consolidation on a schedule and on demand; sends the edges their prune commands."""

    def __init__(
        self,
        config: DreamerConfig,
        graph: KnowledgeGraph,
        js: JetStreamContext | None = None,
        *,
        brain: Brain | None = None,
        issued_by: str = "hub:dreamer",
    ) -> None:
        self.config = config
        self.graph = graph
        self.js = js
        """Where prune commands go; None: they are not sent (they stay recorded as unsent)."""
        self.issued_by = issued_by
        self.last: DreamReport | None = None
        """The latest run's report."""
        self._brain = brain
        self._owns_brain = brain is None
        self._dreamer: Dreamer | None = None
        self._lock = asyncio.Lock()
        self._closed = asyncio.Event()

    async def start(self) -> None:
        """Check the model file (DreamerError if it is missing or not a GGUF file); loads nothing."""
        if self._brain is None:
            try:
                await asyncio.to_thread(check_model_file, self.config.llama_settings("dreamer"))
            except ModelFileError as exc:
                raise DreamerError(str(exc), path=exc.path) from None

    async def run(self, stop: asyncio.Event) -> None:
        """Consolidate every ``interval_s`` until ``stop`` is set or ``shutdown``; a failed run is
        logged and tried again at the next interval."""
        interval = self.config.interval_s
        while not await self._wait(stop, interval or None):
            try:
                await self.consolidate_now()
            except Exception as exc:  # a failed run must not stop the hub; the next one starts afresh
                if self._closed.is_set():
                    return
                log.warning(
                    "consolidation failed (%s: %s); next try in %.0f s", type(exc).__name__, exc, interval
                )

    async def _wait(self, stop: asyncio.Event, seconds: float | None) -> bool:
        """Wait ``seconds`` (None: forever); True if ``stop`` or shutdown came first."""
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._closed.wait())]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        return stop.is_set() or self._closed.is_set()

    async def consolidate_now(self, run_id: str | None = None) -> DreamReport:
        """One run now (after the one in progress, if any), then the prune commands it owes. A caller
        that goes away (an API client's deadline) does not cancel the run: the model may be decoding
        in a worker thread, and the run's result is still written."""
        task = asyncio.ensure_future(self._consolidate(run_id))
        task.add_done_callback(_retrieved)
        return await asyncio.shield(task)

    async def _consolidate(self, run_id: str | None) -> DreamReport:
        async with self._lock:
            if self._closed.is_set():
                raise DreamerError("the consolidation service is shut down")
            dreamer = await self._open()
            report = await dreamer.run(run_id)
            self.last = report
            log.info(
                "consolidation %s: %d clusters, %d facts written, %d episodes consolidated, %d settled, "
                "%d rejections",
                report.run_id or "(nothing to do)",
                report.clusters,
                report.facts_written,
                report.episodes_consolidated,
                report.episodes_settled,
                len(report.rejected),
            )
            await self.send_prunes()
            return report

    async def send_prunes(self) -> int:
        """Queue the prune commands of every run not yet sent; returns how many commands went out.
        NATS errors are logged, not raised: the run stays unsent and is retried."""
        if self.js is None or not self.config.prune:
            return 0
        sent = 0
        try:
            for run_id in await self.graph.unsent_prunes():
                prune = await self.graph.episodes_to_prune(run_id)
                for cmd in prune_commands(run_id, prune, self.issued_by):
                    await send_command(self.js, cmd)
                    sent += 1
                await self.graph.mark_prune_sent(run_id)
        except Exception as exc:  # the graph's errors or NATS's (nats-py's share no base class)
            log.warning("prune commands not sent yet (%s: %s); retried later", type(exc).__name__, exc)
        return sent

    async def _open(self) -> Dreamer:
        if self._dreamer is None:
            if self._brain is None:
                self._brain = await asyncio.to_thread(_load, self.config)
            c = self.config
            self._dreamer = Dreamer(
                self.graph,
                ModelGate(self._brain),
                similarity=c.similarity,
                min_cluster=c.min_cluster,
                max_cluster=c.max_cluster,
                batch=c.batch,
                max_facts=c.max_facts,
                max_tokens=c.max_tokens,
                settle_after=timedelta(days=c.settle_after_days),
            )
        return self._dreamer

    async def shutdown(self) -> None:
        """Idempotent: a run in progress stops before its next cluster; the model is freed."""
        self._closed.set()
        if self._dreamer is not None:
            self._dreamer.stop()
        async with self._lock:
            if self._brain is not None and self._owns_brain:
                with contextlib.suppress(Exception):
                    self._brain.close()
                self._brain = None
                self._dreamer = None

    async def __aenter__(self) -> DreamerService:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.shutdown()


def _load(config: DreamerConfig) -> Brain:
    from edgehub.llm.llama import LlamaBrain  # here: a hub that never consolidates never loads llama.cpp

    try:
        return LlamaBrain.open(config.llama_settings("dreamer"))
    except ModelFileError as exc:
        raise DreamerError(str(exc), path=exc.path) from None


def _retrieved(task: asyncio.Future[DreamReport]) -> None:
    """Mark a run's outcome as seen when its caller went away (asyncio would log it otherwise)."""
    if not task.cancelled() and task.exception() is not None:
        log.debug("a consolidation nobody waited for ended with %r", task.exception())
