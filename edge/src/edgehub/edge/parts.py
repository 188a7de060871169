"""What an edge daemon is made of, and how ``EdgeDaemon.open()`` builds it from the config.

Each part gets what it needs passed in (no part reaches into another through the daemon), and each
resource opened here registers its close on the daemon's exit stack, so a failed open closes what it
had opened and a shutdown closes everything in reverse order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from pathlib import Path

from edgehub.llm import Brain, ModelFileError, ModelGate
from edgehub.llm.settings import DEFAULT_MODEL_NAME, default_model_path
from edgehub.protocol.errors import EdgehubError
from edgehub.protocol.v1 import agent_pb2
from edgehub.sync.decisions import HubKey

from .agent.escalation import Escalation
from .agent.loop import AgentLoop, LoopDeps
from .agent.tools.builtins import knowledge_tool
from .agent.tools.gateway import ExecutionGateway
from .agent.tools.registry import ToolRegistry
from .config import EdgeConfig, ModelConfig
from .datadir import DrainFlag
from .errors import StoreRolledBack
from .memory.compaction import Compactor
from .memory.embed import LazyEmbedder
from .memory.episodic import EpisodeIndexer, EpisodicMemory
from .metrics import DaemonCollector, EdgeMetrics
from .models import (
    HashCache,
    ModelFetcher,
    ModelShelf,
    ModelSwitch,
    RunningModel,
    SwitchableBrain,
    chosen_model,
)
from .pressure import DiskPressure
from .safety.build import Safety, build_safety, build_scrubber
from .scheduler import AgentScheduler
from .shadow import ShadowReasoner, llama_opener
from .store.base import DeviceStore
from .store.retention import Pruner, rules_of
from .store.sqlite import SqliteStore
from .tracing import Tracing
from .triggers.runner import TriggerRunner
from .uplink.commands import CommandRouter
from .uplink.escalation import EscalationClient
from .uplink.identity import DeviceIdentity
from .uplink.knowledge import KnowledgeClient
from .uplink.link import HubLink
from .uplink.models import ModelCommands
from .uplink.twin import TwinReporter

log = logging.getLogger("edgehub.edge")


@dataclass(frozen=True, slots=True)
class Hub:
    """The daemon's side of the hub (only when one is configured or the device is enrolled)."""

    link: HubLink
    knowledge: KnowledgeClient
    """The knowledge tool's way to the hub's L4 graph (through the link's connection)."""
    escalation: EscalationClient | None = None
    """The agents' way to the hub's model (``[escalation] enabled``; through the link's connection)."""


@dataclass(frozen=True, slots=True)
class Models:
    """The models this device holds and runs (``edgehub.edge.models``)."""

    shelf: ModelShelf
    running: RunningModel
    """The model running now (its SHA-256 filled in by ``hash_running`` after start)."""
    hashes: HashCache
    fetcher: ModelFetcher | None
    """Fetches what the hub sends (None: no hub)."""

    async def hash_running(self) -> None:
        """The running model's SHA-256 (the twin's ``model_sha256``), computed once, off the loop."""
        path = self.running.path
        if self.running.sha256 or path is None:
            return
        try:
            sha = await asyncio.to_thread(self.hashes.sha256, path)
        except OSError as exc:
            log.warning("the running model %s was not hashed: %s", path, exc)
            return
        if self.running.path == path and not self.running.sha256:  # not switched meanwhile
            self.running.sha256 = sha


@dataclass(frozen=True, slots=True)
class Parts:
    """What ``EdgeDaemon.open()`` builds; each lives until ``shutdown()``."""

    store: DeviceStore
    brain: SwitchableBrain
    """The model the agents think with (``UseModel`` replaces the one inside)."""
    loop: AgentLoop
    scheduler: AgentScheduler
    router: CommandRouter
    """Applies the hub's commands."""
    twin: TwinReporter
    hub: Hub | None
    indexer: EpisodeIndexer | None
    """L3: indexes each committed step (``[memory] episodic``; None: off)."""
    metrics_port: int | None
    """Where /metrics is served (``[metrics] port``; None: not served)."""
    pruner: Pruner
    """Retention: prunes the store by ``[retention]`` while the daemon runs."""
    shadow: ShadowReasoner
    """The model a rollout runs in shadow here, if any (``shadow.py``)."""
    models: Models | None = None
    """Models from the hub (None: no hub)."""
    restricted: StoreRolledBack | None = None
    """Why the daemon runs restricted (the store lost commits): no agent runs, the outbox is not sent,
    the hub's commands wait; the twin says why. None: it runs normally."""
    triggers: TriggerRunner | None = None
    """Goals started by the site (``[[triggers]]``; None: none configured)."""


@dataclass(frozen=True, slots=True)
class Options:
    """How the daemon was asked to run, besides its config."""

    brain: Brain | None = None
    """A model to use (the caller's, not closed by the daemon); None: load ``[model]``."""
    config_path: Path | None = None
    """The config file (the sandbox hides its folder from commands)."""
    drain_timeout: float = 30.0
    poll_interval: float = 0.2


async def open_parts(cfg: EdgeConfig, opts: Options, opened: AsyncExitStack) -> Parts:
    """Build every part; what must be closed is pushed onto ``opened``."""
    store = SqliteStore.open(cfg.store_path, device_id=cfg.device.id, outgoing=build_scrubber(cfg))
    opened.callback(store.close)
    identity = DeviceIdentity.load(cfg.identity_dir, cfg.device.id)
    if store.rollback is None:
        await _compare_with_hub(store, identity)
    restricted = store.rolled_back  # resuming would repeat lost steps' side effects: run() says so
    safety = build_safety(cfg, store, config_path=opts.config_path, enrolled=identity is not None)
    safety.hub_policy.load(_kept_hub_key(identity))
    models = await _models(cfg, opts)
    model_cfg = cfg.model.model_copy(update={"path": models.running.path})
    if opts.brain is None:
        brain = SwitchableBrain(await _open_brain(cfg, model_cfg))
        opened.callback(brain.close)
    else:
        brain = SwitchableBrain(opts.brain, owned=False)
    tracing = Tracing.from_config(cfg.tracing, cfg.device.id)
    opened.push_async_callback(asyncio.to_thread, tracing.shutdown)  # may wait for a slow collector
    metrics = EdgeMetrics(cfg.device.id, n_ctx=brain.n_ctx)
    opened.callback(metrics.close)
    hub = _hub(cfg, store, identity, metrics)
    replicate = hub is not None and cfg.memory.replicate
    indexer = None if restricted else await _indexer(cfg, store, replicate=replicate)
    shadow = ShadowReasoner(
        cfg.device.data_dir,
        store.append_shadow_step,
        llama_opener(cfg),
        embedder=indexer.memory.embedder if indexer is not None else LazyEmbedder(),
        timeout_s=cfg.shadow.timeout_s,
    )
    opened.push_async_callback(shadow.shutdown)
    deps = _loop_deps(cfg, store, brain, safety, tracing, _on_step(metrics, indexer), hub, indexer)
    loop = AgentLoop(replace(deps, shadow=shadow))
    scheduler = AgentScheduler(
        store,
        loop,
        max_concurrent=cfg.agent.max_concurrent,
        drain_timeout=opts.drain_timeout,
        poll_interval=opts.poll_interval,
        pressure=DiskPressure(
            cfg.store_path.parent,
            resume_free_bytes=int(cfg.store.resume_free_mb * 2**20),
            pause_free_bytes=int(cfg.store.pause_free_mb * 2**20),
        ),
    )
    drain = DrainFlag(cfg.device.data_dir, cfg.device.id)
    switch = ModelSwitch(models.shelf, brain, loop.d.model, _opener(cfg), models.running, scheduler, loop)
    if hub is not None:
        models = replace(models, fetcher=ModelFetcher(models.shelf, lambda: hub.link.nc))
    router = CommandRouter(
        store,
        scheduler,
        drain,
        device_id=cfg.device.id,
        identity=identity,
        keep_consolidated_days=cfg.memory.keep_consolidated_days,
        hub_policy=safety.hub_policy,
        shadow=shadow,
        models=ModelCommands(models.fetcher, switch) if models.fetcher is not None else None,
    )
    twin = TwinReporter(
        cfg,
        store,
        brain,
        tools=loop.d.registry.names(),
        running=lambda: scheduler.running,
        draining=lambda: drain.on,
        paused=lambda: scheduler.pressure.reason if scheduler.pressure else "",
        policy=safety.hub_policy.running,
        restricted=restricted,
        shadow=lambda: (shadow.rollout_id, shadow.sha256),
        running_model=models.running,
        held_models=models.shelf.held,
    )
    port = _serve_metrics(cfg, metrics, store, scheduler, hub, shadow)
    pruner = _pruner(cfg, store, indexer)
    triggers = _triggers(cfg, store, scheduler, metrics, hub)
    return Parts(
        store,
        brain,
        loop,
        scheduler,
        router,
        twin,
        hub,
        indexer,
        port,
        pruner,
        shadow,
        models,
        restricted,
        triggers,
    )


def _triggers(
    cfg: EdgeConfig, store: DeviceStore, scheduler: AgentScheduler, metrics: EdgeMetrics, hub: Hub | None
) -> TriggerRunner | None:
    """The runner of the enabled ``[[triggers]]`` (None: there are none)."""
    if not any(t.enabled for t in cfg.triggers):
        return None
    return TriggerRunner(
        cfg.triggers,
        store,
        scheduler.schedule,
        device_id=cfg.device.id,
        counter=metrics.trigger_events,
        nats=(lambda: hub.link.nc) if hub is not None else (lambda: None),
    )


def _pruner(cfg: EdgeConfig, store: DeviceStore, indexer: EpisodeIndexer | None) -> Pruner:
    """Retention by ``[retention]``; with L3 on, no mind-log row it has not indexed yet is pruned."""
    r = cfg.retention
    return Pruner(
        store,
        rules_of(r),
        interval_s=r.interval_s,
        batch_rows=r.batch_rows,
        vacuum_pages=r.vacuum_pages,
        indexed_through=(lambda: indexer.memory.indexed_through) if indexer is not None else (lambda: None),
    )


def _kept_hub_key(identity: DeviceIdentity | None) -> HubKey | None:
    """The hub's key this device keeps (None: not enrolled, none kept, or unreadable: logged)."""
    try:
        return identity.hub_key() if identity is not None else None
    except EdgehubError as exc:
        log.error("%s", exc)
        return None


async def _compare_with_hub(store: SqliteStore, identity: DeviceIdentity | None) -> None:
    """Check the store against the last outbox sequence the hub applied from this device (when enrolled
    with a hub's device API): a store and watermark that went back together are caught only there. An
    unreachable hub is logged and the watermark's check stands."""
    from .uplink.api import HubApiError
    from .uplink.recovery import applied_seq

    if identity is None or not identity.device_api:
        return
    try:
        store.compare_hub(await applied_seq(identity))
    except HubApiError as exc:
        log.warning("store not compared with the hub (%s); the watermark's check stands", exc)


async def _models(cfg: EdgeConfig, opts: Options) -> Models:
    """The models folder, and the model to run: the hub's kept choice when its file checks out (only
    for a brain of the daemon's own), else ``[model] path`` (or the default model)."""
    data_dir = cfg.device.data_dir
    hashes = HashCache(data_dir)
    chosen = await asyncio.to_thread(chosen_model, data_dir, hashes) if opts.brain is None else None
    if chosen is None:  # a caller's brain runs no file the daemon knows of
        path = (cfg.model.path or _default_path()) if opts.brain is None else None
        chosen = RunningModel(path, name=_name_of(cfg.model.path))
    return Models(ModelShelf(data_dir), chosen, hashes, None)


def _default_path() -> Path | None:
    try:
        return default_model_path()
    except ModelFileError:
        return None  # opening the brain says why


def _name_of(path: Path | None) -> str:
    return path.stem if path is not None else DEFAULT_MODEL_NAME


async def _open_brain(cfg: EdgeConfig, model: ModelConfig) -> Brain:
    """The model of ``model``: in a worker CRIU can snapshot when ``[snapshot] enabled``."""
    return await asyncio.to_thread(_opener(cfg), model.path)


def _opener(cfg: EdgeConfig) -> Callable[[Path | None], Brain]:
    """How the daemon opens a model file as its brain (at start, and on ``UseModel``)."""

    def open_model(path: Path | None) -> Brain:
        model = cfg.model.model_copy(update={"path": path})
        if cfg.snapshot.enabled:
            from .worker import open_worker_brain

            return open_worker_brain(cfg.model_copy(update={"model": model}))
        from .brain import open_brain  # imported here: unit tests run without a model

        return open_brain(model)

    return open_model


def _hub(
    cfg: EdgeConfig, store: DeviceStore, identity: DeviceIdentity | None, metrics: EdgeMetrics
) -> Hub | None:
    """The link, the knowledge client and the escalation client (``[escalation] enabled``) when a hub
    is configured (``[hub] nats_url``) or the device is enrolled with one."""
    if not (cfg.hub.nats_url or identity is not None):
        return None
    link = HubLink(cfg.hub, store, cfg.device.id, identity=identity)
    knowledge = KnowledgeClient(
        store,
        cfg.device.id,
        lambda: link.nc,
        timeout_s=cfg.hub.knowledge_timeout_s,
        cache_s=cfg.hub.knowledge_cache_s,
    )
    escalation = None
    if cfg.escalation.enabled:
        escalation = EscalationClient(
            cfg.escalation, cfg.device.id, lambda: link.nc, scrubber=build_scrubber(cfg),
            metrics=metrics.registry,
        )  # fmt: skip
    return Hub(link, knowledge, escalation)


async def _indexer(cfg: EdgeConfig, store: DeviceStore, *, replicate: bool) -> EpisodeIndexer | None:
    if not cfg.memory.episodic:
        return None
    embedder = LazyEmbedder()  # loaded by the first embedding, dropped when idle (trim.py)
    half_life_s = cfg.memory.half_life_days * 86400
    return EpisodeIndexer(EpisodicMemory(store, embedder, half_life_s=half_life_s, replicate=replicate))


def _on_step(metrics: EdgeMetrics, indexer: EpisodeIndexer | None) -> Callable[[agent_pb2.StepEvent], None]:
    """What the loop tells about each committed step: the metrics, and L3 to index it."""

    def on_step(event: agent_pb2.StepEvent) -> None:
        metrics.observe_step(event)
        if indexer is not None:
            indexer.notify(event)

    return on_step


def _loop_deps(
    cfg: EdgeConfig,
    store: DeviceStore,
    brain: Brain,
    safety: Safety,
    tracing: Tracing,
    on_step: Callable[[agent_pb2.StepEvent], None],
    hub: Hub | None,
    indexer: EpisodeIndexer | None,
) -> LoopDeps:
    extra = [knowledge_tool(timeout_s=cfg.hub.knowledge_timeout_s)] if hub is not None else []
    registry = ToolRegistry.default(cfg.tools, extra)
    gateway = ExecutionGateway(
        registry,
        store,
        observation_limit=cfg.agent.observation_chars,
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
        cfg=cfg.agent,
        device_id=cfg.device.id,
        workspaces=cfg.workspaces,
        n_ctx=brain.n_ctx,
        max_action_tokens=cfg.model.max_action_tokens,
        monitor=safety.monitor,
        sandbox=safety.sandbox,
        on_step=on_step,
        tracer=tracing.tracer,
        memory=indexer.memory if indexer is not None else None,
        knowledge=hub.knowledge if hub is not None else None,
        escalation=_escalation(cfg, safety, hub),
    )


def _escalation(cfg: EdgeConfig, safety: Safety, hub: Hub | None) -> Escalation | None:
    """The loop's escalation to the hub's model: its rules (``[escalation]``, policy's ``escalate``)."""
    if hub is None or hub.escalation is None:
        return None
    client = hub.escalation
    return Escalation(
        cfg.escalation,
        client,
        max_tokens=cfg.model.max_action_tokens,
        needs_hub=lambda tool, args: safety.policy.decide(tool, args).escalate,
        on_outcome=client.metrics.outcome,
    )


def _serve_metrics(
    cfg: EdgeConfig,
    metrics: EdgeMetrics,
    store: DeviceStore,
    scheduler: AgentScheduler,
    hub: Hub | None,
    shadow: ShadowReasoner,
) -> int | None:
    """Add the daemon's scrape-time figures; serve /metrics when ``[metrics] port`` is set (its port)."""
    published = (lambda: hub.link.published) if hub is not None else (lambda: None)
    metrics.add_collector(
        DaemonCollector(
            cfg.device.id,
            outbox_depth=store.outbox_depth,
            running=lambda: len(scheduler.running),
            published=published,
            data_dir=cfg.device.data_dir,
            shadow=shadow.counts.by_outcome,
        )
    )
    if cfg.metrics.port is None:
        return None
    port = metrics.serve(cfg.metrics.addr, cfg.metrics.port)
    log.info("metrics on http://%s:%d/metrics", cfg.metrics.addr, port)
    return port
