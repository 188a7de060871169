"""The edge daemon: supervises the agents on this device.

Lifecycle (the same for every long-lived component): ``async with EdgeDaemon(cfg) as d: await d.run()``;
``request_stop()`` (SIGTERM) makes each agent finish its current step (so it is checkpointed) and
stop; ``shutdown()`` is idempotent and waits at most ``drain_timeout`` for that.

Work arrives through the store: ``submit()`` (or another process such as the CLI) inserts a PENDING
agent and the scheduler picks it up. On start, agents left RUNNING by a previous life (a crash or a
drain) are resumed from their last checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import TracebackType

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from edgehub.llm import Brain, ModelGate
from edgehub.llm.settings import DEFAULT_MODEL_NAME
from edgehub.protocol.keywords import keywords
from edgehub.protocol.v1 import agent_pb2, commands_pb2
from edgehub.sync.errors import MessageRejected

from .agent.loop import AgentLoop, LoopDeps, new_agent
from .agent.tools.builtins import knowledge_tool
from .agent.tools.gateway import ExecutionGateway
from .agent.tools.registry import ToolRegistry
from .config import EdgeConfig
from .errors import EdgeError
from .memory.compaction import Compactor
from .memory.embed import shared_embedder
from .memory.episodic import EpisodeIndexer, EpisodicMemory
from .metrics import EdgeMetrics
from .safety.approvals import ApprovalError, decide
from .safety.build import Safety, build_safety, build_scrubber
from .store.sqlite import SqliteStore
from .tracing import Tracing
from .uplink.identity import DeviceIdentity
from .uplink.knowledge import KnowledgeClient
from .uplink.link import HubLink, daemon_version
from .uplink.migration import migrate_in, migrate_out

log = logging.getLogger("edgehub.edge")
S = agent_pb2
ACTIVE = (S.AGENT_STATUS_PENDING, S.AGENT_STATUS_RUNNING)
MEMORY_KEYWORDS = 50
"""Words of its L3 memories a device reports (its twin's ``memories``)."""
MEMORY_KEYWORDS_S = 60.0


def _agent_of(cmd: commands_pb2.Command) -> str:
    """The agent a command is about ('' for device-wide commands)."""
    kind = cmd.WhichOneof("body")
    if kind == "decide_approval":
        return cmd.decide_approval.key.rsplit("/", 1)[0]
    if kind in ("stop_agent", "migrate_out", "migrate_in", "start_agent"):
        return str(getattr(cmd, kind).agent_id)
    return ""


class DaemonLock:
    """One daemon per data dir: an exclusive flock on ``<data_dir>/edge.lock``."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "edge.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise EdgeError(f"another edge daemon is running on {self.path.parent}") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @staticmethod
    def held(data_dir: Path) -> bool:
        """True when a daemon holds the lock of ``data_dir``."""
        path = data_dir / "edge.lock"
        if not path.exists():
            return False
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False


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
        self.config_path = config_path
        self.drain_timeout = drain_timeout
        self.poll_interval = poll_interval
        self._brain = brain
        self._own_brain = brain is None
        self._lock = DaemonLock(cfg.device.data_dir)
        self._stop = asyncio.Event()
        self._agent_stops: dict[str, asyncio.Event] = {}
        self._stop_reasons: dict[str, str] = {}
        self._held: set[str] = set()
        self._keywords: list[str] = []
        self._keywords_at = -MEMORY_KEYWORDS_S
        """Agents the scheduler must not start (stopped for a migration)."""
        self._tasks: dict[str, asyncio.Task[agent_pb2.AgentState]] = {}
        self._closed = False
        self.store: SqliteStore | None = None
        self.loop: AgentLoop | None = None
        self.safety: Safety | None = None
        self.hublink: HubLink | None = None
        self.indexer: EpisodeIndexer | None = None
        """L3: indexes each committed step (``[memory] episodic``)."""
        self.identity: DeviceIdentity | None = None
        """Credentials from ``edgehub edge enroll`` (None: not enrolled)."""
        self.knowledge: KnowledgeClient | None = None
        """The knowledge tool's way to the hub's L4 graph (None: this device has no hub)."""
        self.metrics = EdgeMetrics(cfg.device.id)
        self.metrics_port: int | None = None
        self.metrics.add_collector(self._collect)
        self.tracing = Tracing()  # off until open()

    async def __aenter__(self) -> EdgeDaemon:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.shutdown()

    async def open(self) -> None:
        """Take the data dir, open the store and load the model."""
        self._lock.acquire()
        try:
            self.store = SqliteStore.open(
                self.cfg.store_path, device_id=self.cfg.device.id, outgoing=build_scrubber(self.cfg)
            )
            self.safety = build_safety(self.cfg, self.store, config_path=self.config_path)
            if self._brain is None and self.cfg.snapshot.enabled:  # the model in a worker CRIU can snapshot
                from .worker import open_worker_brain

                self._brain = await asyncio.to_thread(open_worker_brain, self.cfg)
            elif self._brain is None:
                from .brain import open_brain  # imported here: unit tests run without a model

                self._brain = await asyncio.to_thread(open_brain, self.cfg.model)
            self.tracing = Tracing.from_config(self.cfg.tracing, self.cfg.device.id)
            self.identity = DeviceIdentity.load(self.cfg.identity_dir, self.cfg.device.id)
            if self.has_hub:
                self.knowledge = KnowledgeClient(
                    self.store,
                    self.cfg.device.id,
                    lambda: self.hublink.nc if self.hublink is not None else None,
                    timeout_s=self.cfg.hub.knowledge_timeout_s,
                    cache_s=self.cfg.hub.knowledge_cache_s,
                )
            if self.cfg.memory.episodic:
                embedder = await asyncio.to_thread(shared_embedder)
                memory = EpisodicMemory(
                    self.store,
                    embedder,
                    half_life_s=self.cfg.memory.half_life_days * 86400,
                    replicate=self.has_hub and self.cfg.memory.replicate,
                )
                self.indexer = EpisodeIndexer(memory)
            self.loop = AgentLoop(self._deps(self.store, self._brain))
            if self.cfg.metrics.port is not None:
                self.metrics_port = self.metrics.serve(self.cfg.metrics.addr, self.cfg.metrics.port)
                log.info("metrics on http://%s:%d/metrics", self.cfg.metrics.addr, self.metrics_port)
        except BaseException:
            self._release()
            raise

    def _deps(self, store: SqliteStore, brain: Brain) -> LoopDeps:
        extra = [knowledge_tool(timeout_s=self.cfg.hub.knowledge_timeout_s)] if self.knowledge else []
        registry = ToolRegistry.default(self.cfg.tools, extra)
        safety = self.safety
        assert safety is not None
        gateway = ExecutionGateway(
            registry,
            store,
            observation_limit=self.cfg.agent.observation_chars,
            admissions=safety.admissions,
            interceptors=safety.interceptors,
        )
        return LoopDeps(
            store=store,
            registry=registry,
            gateway=gateway,
            model=ModelGate(brain),
            count_tokens=brain.count_tokens,
            compactor=Compactor(brain),
            cfg=self.cfg.agent,
            device_id=self.cfg.device.id,
            workspaces=self.cfg.workspaces,
            n_ctx=brain.n_ctx,
            max_action_tokens=self.cfg.model.max_action_tokens,
            monitor=safety.monitor,
            sandbox=safety.sandbox,
            on_step=self._on_step,
            tracer=self.tracing.tracer,
            memory=self.indexer.memory if self.indexer is not None else None,
            knowledge=self.knowledge,
        )

    def _on_step(self, event: agent_pb2.StepEvent) -> None:
        self.metrics.observe_step(event)
        if self.indexer is not None:
            self.indexer.notify(event)

    def submit(
        self,
        goal: str,
        *,
        agent_id: str | None = None,
        budget: agent_pb2.Budget | None = None,
        task_id: str = "",
    ) -> str:
        """Create a PENDING agent for ``goal``; the scheduler starts it."""
        assert self.store is not None, "open() first"
        agent_id = agent_id or f"agent-{uuid.uuid4().hex[:12]}"
        self.store.create_agent(new_agent(agent_id, goal, budget, task_id))
        return agent_id

    @functools.cached_property
    def profile(self) -> dict[str, object]:
        """This machine's hardware profile (``edgehub hardware detect``) and the settings it implies,
        reported to the hub in the twin. ``edgehub edge run`` lays those settings under the config
        (``[device] apply_profile``); a daemon built from an ``EdgeConfig`` directly has what it was given."""
        try:
            from edgehub.hardware import this_machine

            settings = this_machine()
        except Exception as exc:  # a broken profile must not stop the daemon: report why instead
            log.warning("hardware profile unavailable: %s", exc)
            return {"name": "", "error": str(exc)[:300]}
        return {
            "name": settings.profile,
            "settings": settings.to_dict(),
            "apply": self.cfg.device.apply_profile,
        }

    @property
    def has_hub(self) -> bool:
        """A hub is configured (``[hub] nats_url``) or the device is enrolled with one."""
        return bool(self.cfg.hub.nats_url or self.identity is not None)

    def request_stop(self) -> None:
        """Ask every agent to stop after its current step (SIGTERM handler)."""
        self._stop.set()
        for stop in self._agent_stops.values():
            stop.set()

    def _collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        d = self.cfg.device.id
        if self.store is not None:
            depth = GaugeMetricFamily(
                "edgehub_edge_outbox_depth", "Events waiting for the hub", labels=["device"]
            )
            depth.add_metric([d], self.store.outbox_depth())
            yield depth
        running = GaugeMetricFamily("edgehub_edge_agents_running", "Agents stepping now", labels=["device"])
        running.add_metric([d], len(self._tasks))
        yield running
        publisher = self.hublink.publisher if self.hublink else None
        if publisher is not None:
            sent = CounterMetricFamily("edgehub_edge_events_published", "Events published", labels=["device"])
            sent.add_metric([d], publisher.stats.published)
            yield sent

    def report(self) -> dict[str, object]:
        """What this device reports in its twin besides version, hardware and load."""
        return {
            "agents_running": sorted(self._tasks),
            "max_concurrent": self.cfg.agent.max_concurrent,
            "draining": self.draining,
            # what the hub's planner places tasks by (capabilities, affinity, model)
            "tools": self.loop.d.registry.names() if self.loop is not None else [],
            "labels": dict(self.cfg.device.labels),
            "model": self._brain.fingerprint if self._brain is not None else "",
            "model_name": self.cfg.model.path.stem if self.cfg.model.path else DEFAULT_MODEL_NAME,
            "profile": self.profile,
            "memories": self.memories(),
        }

    def memories(self) -> list[str]:
        """The words this device's L3 memories are most about (data locality for the hub's planner),
        recomputed at most every ``MEMORY_KEYWORDS_S``; none without episodic memory."""
        now = time.monotonic()
        if self.store is None or now - self._keywords_at < MEMORY_KEYWORDS_S:
            return self._keywords
        self._keywords_at = now
        if self.cfg.memory.episodic:
            self._keywords = keywords(self.store.recent_episode_texts(), limit=MEMORY_KEYWORDS)
        return self._keywords

    @property
    def draining(self) -> bool:
        """Drained by the hub: running agents finish, new ones are refused (kept across restarts)."""
        return (self.cfg.device.data_dir / "draining").exists()

    def set_draining(self, on: bool, reason: str) -> None:
        marker = self.cfg.device.data_dir / "draining"
        if on:
            marker.write_text(reason + "\n")
        else:
            marker.unlink(missing_ok=True)
        log.warning("device %s %s: %s", self.cfg.device.id, "draining" if on else "resumed", reason)

    async def stop_agent(self, agent_id: str, reason: str) -> agent_pb2.AgentState:
        """Stop one agent after its current step; returns once STOPPED is committed."""
        assert self.loop is not None, "open() first"
        task = self._tasks.get(agent_id)
        if task is not None:
            self._stop_reasons[agent_id] = reason
            self._agent_stops.setdefault(agent_id, asyncio.Event()).set()
            await asyncio.shield(task)
        return self.loop.end(agent_id, S.AGENT_STATUS_STOPPED, reason)

    @contextlib.asynccontextmanager
    async def hold(self, agent_id: str) -> AsyncIterator[None]:
        """Stop the agent after its current step (checkpointed, status unchanged) and keep the
        scheduler from starting it again while the block runs."""
        self._held.add(agent_id)
        try:
            task = self._tasks.get(agent_id)
            if task is not None:
                self._agent_stops.setdefault(agent_id, asyncio.Event()).set()
                await asyncio.shield(task)
            yield
        finally:
            self._held.discard(agent_id)

    async def _check_epoch(self, cmd: commands_pb2.Command) -> None:
        """Fencing: a command about an agent carries its epoch as the hub knows it. Older than this
        device's copy: refused. Newer: this copy is stale (the agent moved on without it), so it
        stands down: stopped, marked MIGRATED, never run here again. A copy that left with a
        migration takes no commands but that migration's own."""
        assert self.store is not None
        kind = cmd.WhichOneof("body")
        agent_id = _agent_of(cmd)
        if kind in ("start_agent", "migrate_in") or not (agent_id and self.store.has_agent(agent_id)):
            return  # start: idempotent by agent id; migrate_in: brings a newer epoch by design
        local = self.store.load_agent(agent_id)
        if local.status == S.AGENT_STATUS_MIGRATED and kind != "migrate_out":
            where = f" to {local.migrated_to}" if local.migrated_to else ""
            raise MessageRejected(f"agent {agent_id} left this device{where} (epoch {local.epoch})")
        if cmd.epoch < local.epoch:
            raise MessageRejected(
                f"stale command for {agent_id}: epoch {cmd.epoch}, this device has {local.epoch}"
            )
        if cmd.epoch > local.epoch and local.status != S.AGENT_STATUS_MIGRATED:
            async with self.hold(agent_id):
                self.store.mark_migrated(agent_id, "", "")
            log.error(
                "agent %s: the hub knows epoch %d, this copy is %d: stood down",
                agent_id,
                cmd.epoch,
                local.epoch,
            )
            raise MessageRejected(
                f"{agent_id}: this device's copy (epoch {local.epoch}) is stale; stood down"
            )

    async def apply_command(self, cmd: commands_pb2.Command) -> None:
        """Apply a hub command; returns once its effect is committed (then the command is acked)."""
        assert self.store is not None
        kind = cmd.WhichOneof("body")
        log.info("command %s from %s: %s", cmd.command_id, cmd.issued_by or "hub", kind)
        await self._check_epoch(cmd)
        if kind == "migrate_out":
            await migrate_out(self, cmd)
        elif kind == "migrate_in":
            await migrate_in(self, cmd)
        elif kind == "start_agent":
            start = cmd.start_agent
            if not self.store.has_agent(start.agent_id):
                if self.draining:
                    raise MessageRejected(
                        f"device {self.cfg.device.id} is draining: {start.agent_id} not started"
                    )
                self.submit(start.goal, agent_id=start.agent_id, budget=start.budget, task_id=start.task_id)
        elif kind == "drain":
            self.set_draining(not cmd.drain.resume, cmd.drain.reason)
        elif kind == "stop_agent":
            if self.store.has_agent(cmd.stop_agent.agent_id):
                await self.stop_agent(cmd.stop_agent.agent_id, cmd.stop_agent.reason or "stopped by the hub")
        elif kind == "decide_approval":
            d = cmd.decide_approval
            with contextlib.suppress(ApprovalError):  # already decided: the effect is there
                decide(self.store, d.key, approve=d.approve, by=d.by, note=d.note)
        elif kind == "prune_episodes":
            keep_s = self.cfg.memory.keep_consolidated_days * 86400
            marked, deleted = self.store.prune_episodes(
                list(cmd.prune_episodes.keys), cmd.prune_episodes.run_id, keep_s=keep_s
            )
            log.info(
                "consolidation %s: %d episodes pruned, %d deleted (retention %.1f days)",
                cmd.prune_episodes.run_id,
                marked,
                deleted,
                self.cfg.memory.keep_consolidated_days,
            )
        else:  # a newer hub's command this daemon does not know: dead letters, with the reason
            raise MessageRejected(f"unknown command {kind or '(empty)'}; this daemon is {daemon_version()}")

    async def run(self, *, until_idle: bool = False) -> None:
        """Schedule agents until stopped (or, with ``until_idle``, until none is left to run)."""
        assert self.store is not None, "open() first"
        assert self.loop is not None
        log.info("edge daemon %s running on %s", self.cfg.device.id, self.cfg.device.data_dir)
        sync_stop = asyncio.Event()
        link = None
        if self.has_hub:
            self.hublink = HubLink(
                self.cfg.hub,
                self.store,
                self.cfg.device.id,
                on_command=self.apply_command,
                report=self.report,
                identity=self.identity,
            )
            link = asyncio.create_task(self.hublink.run(sync_stop), name="hublink")
        indexing = None
        if self.indexer is not None:
            indexing = asyncio.create_task(self.indexer.run(sync_stop), name="l3-indexer")
        sleeper = None
        if self._own_brain and self.cfg.snapshot.enabled:
            from .worker import idle_checkpoints

            sleeper = idle_checkpoints(self._brain, self.cfg.snapshot, sync_stop)
        try:
            while not self._stop.is_set():
                self._start_ready()
                if self.hublink is not None:
                    self.hublink.check_alarm()
                if until_idle and not self._tasks:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.poll_interval)
            await self._drain()
        finally:
            sync_stop.set()  # after the agents' last checkpoints, so the final drain sends them
            if link is not None:
                await link
            if indexing is not None:  # what it has not indexed yet, the next start catches up with
                await indexing
            if sleeper is not None:
                await sleeper

    def schedule(self) -> None:
        """Start what is ready now (an agent just imported), not at the scheduler's next tick."""
        if self.loop is not None and not self._stop.is_set():
            self._start_ready()

    def _start_ready(self) -> None:
        assert self.store is not None
        for state in self.store.list_agents(ACTIVE):
            if state.agent_id in self._tasks or len(self._tasks) >= self.cfg.agent.max_concurrent:
                continue
            if state.agent_id in self._held:
                continue
            task = asyncio.create_task(self._run_agent(state.agent_id), name=state.agent_id)
            self._tasks[state.agent_id] = task
            task.add_done_callback(functools.partial(self._forget, state.agent_id))

    def _forget(self, agent_id: str, _task: object) -> None:
        self._tasks.pop(agent_id, None)

    async def _run_agent(self, agent_id: str) -> agent_pb2.AgentState:
        assert self.loop is not None
        try:
            stop = self._agent_stops.setdefault(agent_id, asyncio.Event())
            if self._stop.is_set():
                stop.set()
            state = await self.loop.run(agent_id, stop)
        except Exception as exc:  # a bug in one agent's step must not take the others down
            log.exception("agent %s failed with an internal error", agent_id)
            reason = f"internal error: {exc.__class__.__name__}: {exc}"
            state = self.loop.end(agent_id, S.AGENT_STATUS_FAILED, reason)
        finally:
            self._agent_stops.pop(agent_id, None)
        stopped_for = self._stop_reasons.pop(agent_id, None)
        if stopped_for is not None:  # stopped on request (not a drain, which resumes on restart)
            state = self.loop.end(agent_id, S.AGENT_STATUS_STOPPED, stopped_for)
        log.info("agent %s: %s", agent_id, S.AgentStatus.Name(state.status))
        return state

    async def _drain(self) -> None:
        tasks = list(self._tasks.values())
        if not tasks:
            return
        log.info("draining %d agent(s)", len(tasks))
        _, pending = await asyncio.wait(tasks, timeout=self.drain_timeout)
        for task in pending:  # their last checkpoint stands; the step in flight re-runs on resume
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def shutdown(self) -> None:
        """Stop agents (drained), flush their traces, close the store and the model. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.request_stop()
        await self._drain()
        await asyncio.to_thread(self.tracing.shutdown)  # may wait for a slow collector: off the loop
        self._release()

    def _release(self) -> None:
        self.tracing.shutdown()  # a no-op once shut down; here for a failed open()
        self.metrics.close()
        if self.store is not None:
            self.store.close()
        if self._own_brain and self._brain is not None:
            self._brain.close()
        self._lock.release()
