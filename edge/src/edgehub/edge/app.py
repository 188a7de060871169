"""The edge daemon: opens this device's parts (``parts.py``), runs them and shuts them down.

Lifecycle (the same for every long-lived component): ``async with EdgeDaemon(cfg) as d: await d.run()``;
``request_stop()`` (SIGTERM) makes each agent finish its current step (so it is checkpointed) and
stop; ``shutdown()`` is idempotent and waits at most ``drain_timeout`` for that.

Work arrives through the store: ``submit()`` (or another process such as the CLI) inserts a PENDING
agent and the scheduler (``scheduler.py``) picks it up. On start, agents left RUNNING by a previous
life (a crash or a drain) are resumed from their last checkpoint. With a hub, the link
(``uplink/link.py``) replicates the outbox, heartbeats the twin (``uplink/twin.py``) and hands the
hub's commands to the router (``uplink/commands.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from edgehub.llm import Brain
from edgehub.protocol.v1 import agent_pb2, twin_pb2

from .agent.loop import AgentLoop
from .config import EdgeConfig
from .datadir import DaemonLock
from .errors import EdgeError
from .memory.embed import LazyEmbedder
from .memory.episodic import EpisodeIndexer
from .parts import Options, Parts, open_parts
from .store.base import DeviceStore
from .store.retention import Pruner
from .store.upkeep import wal_checkpoints
from .trim import IdleTrim

log = logging.getLogger("edgehub.edge")


class EdgeDaemon:
    """Runs agents; see the module docstring for the lifecycle."""

    def __init__(
        self,
        cfg: EdgeConfig,
        *,
        brain: Brain | None = None,
        drain_timeout: float = 30.0,
        poll_interval: float = 0.2,
        config_path: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.opts = Options(brain, config_path, drain_timeout, poll_interval)
        self._parts: Parts | None = None
        self._resources = contextlib.AsyncExitStack()
        """Closes what ``open()`` opened, in reverse order."""
        self._closed = False
        self._stopping = asyncio.Event()
        """Set by ``request_stop``: what a restricted daemon waits for."""

    async def __aenter__(self) -> EdgeDaemon:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.shutdown()

    async def open(self) -> None:
        """Take the data dir (one daemon per data dir), open the store, load the model and build the
        other parts; on an error, close again what was opened."""
        async with contextlib.AsyncExitStack() as opened:
            lock = DaemonLock(self.cfg.device.data_dir)
            lock.acquire()
            opened.callback(lock.release)
            self._parts = await open_parts(self.cfg, self.opts, opened)
            self._resources = opened.pop_all()

    @property
    def parts(self) -> Parts:
        """The parts ``open()`` built; ``EdgeError`` before that."""
        if self._parts is None:
            raise EdgeError("the edge daemon is not open: call open() (or use async with) first")
        return self._parts

    @property
    def store(self) -> DeviceStore:
        """The device's store."""
        return self.parts.store

    @property
    def brain(self) -> Brain:
        """The model the agents think with."""
        return self.parts.brain

    @property
    def loop(self) -> AgentLoop:
        """The agents' ReAct loop."""
        return self.parts.loop

    @property
    def indexer(self) -> EpisodeIndexer | None:
        """L3 indexing (None: ``[memory] episodic`` is off)."""
        return self.parts.indexer

    @property
    def pruner(self) -> Pruner:
        """Retention (``[retention]``)."""
        return self.parts.pruner

    @property
    def metrics_port(self) -> int | None:
        """Where /metrics is served (None: not served)."""
        return self.parts.metrics_port

    def submit(
        self,
        goal: str,
        *,
        agent_id: str | None = None,
        budget: agent_pb2.Budget | None = None,
        task_id: str = "",
        tools: list[str] | None = None,
    ) -> str:
        """Create a PENDING agent for ``goal``; the scheduler starts it. ``tools``: the only tools it
        may call besides ``finish`` (None: every tool)."""
        return self.parts.scheduler.submit(
            goal, agent_id=agent_id, budget=budget, task_id=task_id, tools=tools
        )

    def report(self) -> twin_pb2.DeviceTwin:
        """This device's twin as of now (what the heartbeat sends)."""
        return self.parts.twin.twin()

    def request_stop(self) -> None:
        """Ask every agent to stop after its current step (SIGTERM handler)."""
        self._stopping.set()
        if self._parts is not None:
            self._parts.scheduler.request_stop()

    async def run(self, *, until_idle: bool = False) -> None:
        """Schedule agents until stopped (or, with ``until_idle``, until none is left to run)."""
        p = self.parts
        if p.restricted is not None:
            await self._run_restricted(p, until_idle=until_idle)
            return
        log.info("edge daemon %s running on %s", self.cfg.device.id, self.cfg.device.data_dir)
        sync_stop = asyncio.Event()
        helpers = self._helpers(p, sync_stop)
        try:
            tick = p.hub.link.check_alarm if p.hub is not None else None
            await p.scheduler.run(until_idle=until_idle, tick=tick)
        finally:
            sync_stop.set()  # after the agents' last checkpoints, so the final drain sends them
            for helper in helpers:
                await helper

    async def _run_restricted(self, p: Parts, *, until_idle: bool) -> None:
        """The store lost commits: no agent runs and nothing is sent from the outbox, but the twin goes
        on reporting (RESTRICTED, why, the agents held) so the hub and its operator see it, until
        stopped. Only an operator ends it (``edgehub edge doctor --store --recover-from-hub`` or
        ``--accept-rollback`` with the daemon stopped). With ``until_idle`` (batch mode) it reports once
        and raises ``StoreRolledBack``: nothing could run."""
        assert p.restricted is not None
        held = p.store.held_agents()
        log.error("edge daemon %s RESTRICTED, holding agents %s: %s", self.cfg.device.id,
                  ", ".join(held) or "(none)", p.restricted)  # fmt: skip
        stop = asyncio.Event()
        link = None
        if p.hub is not None:
            link = asyncio.create_task(p.hub.link.run(stop, twin=p.twin.twin, publish=False), name="hublink")
        try:
            if until_idle:
                raise p.restricted
            await self._stopping.wait()
        finally:
            stop.set()
            if link is not None:
                await link

    def _helpers(self, p: Parts, stop: asyncio.Event) -> list[asyncio.Task[None]]:
        """What runs beside the agents until ``stop``: the hub link (and the fetch of the hub's
        policy), L3 indexing, the disk-pressure check, the idle trim, idle checkpoints of the model's
        worker, the store's WAL checkpoints and retention."""
        wal = wal_checkpoints(p.store, self.cfg.store.checkpoint_s, stop)
        helpers = [asyncio.create_task(wal, name="wal-checkpoints")]
        if p.pruner.rules:
            helpers.append(asyncio.create_task(p.pruner.run(stop), name="retention"))
        if p.hub is not None:
            link = p.hub.link.run(stop, commands=p.router.apply, twin=p.twin.twin)
            helpers.append(asyncio.create_task(link, name="hublink"))
            if p.router.policies is not None:  # the hub's latest policy for this device
                helpers.append(asyncio.create_task(p.router.policies.converge(stop), name="policy"))
        if p.indexer is not None:  # what it has not indexed when stopped, the next start catches up with
            helpers.append(asyncio.create_task(p.indexer.run(stop), name="l3-indexer"))
        if p.scheduler.pressure is not None:  # resumes agents paused by a full disk
            helpers.append(asyncio.create_task(p.scheduler.pressure.run(stop), name="disk-pressure"))
        helpers.append(asyncio.create_task(p.shadow.resume(), name="shadow-resume"))  # a rollout's, if any
        trim = IdleTrim(lambda: len(p.scheduler.running), _releasers(p))
        helpers.append(asyncio.create_task(trim.run(stop), name="idle-trim"))
        if self.opts.brain is None and self.cfg.snapshot.enabled:  # only a brain of its own sleeps
            from .worker import idle_checkpoints

            if (sleeper := idle_checkpoints(p.brain, self.cfg.snapshot, stop)) is not None:
                helpers.append(sleeper)
        return helpers

    async def shutdown(self) -> None:
        """Stop agents (drained), flush their traces, close the store and the model. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._parts is not None:
            self._parts.scheduler.request_stop()
            await self._parts.scheduler.drain()
        await self._resources.aclose()


def _releasers(p: Parts) -> list[Callable[[], object]]:
    """What an idle daemon drops: the embedding model (loaded again by the next embedding)."""
    embedder = p.indexer.memory.embedder if p.indexer is not None else None
    return [embedder.release] if isinstance(embedder, LazyEmbedder) else []
