"""The hub's services, built once (``HubServices.build``, in ``HubDaemon.open``) and handed to the
management API (``api.serve``) and to the daemon's run: one of each, so the API and the background
work share every cache and every view.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry

from edgehub.protocol.v1 import hub_pb2
from edgehub.sync.auth import Trust
from edgehub.sync.decisions import SigningKey
from edgehub.sync.tls import CertificateAuthority

from .config import HubConfig
from .escalation import EscalationService
from .fleet.agents import AgentRegistry
from .fleet.control import Commands
from .fleet.devices import DeviceRegistry, DeviceWatcher
from .fleet.identity import Credentials, CredentialsView, DeviceIdentity, Enrollments
from .fleet.migration import MigrationService
from .fleet.models import FleetModels
from .fleet.policies import FleetPolicies
from .fleet.recovery import DeviceRecoveryView
from .fleet.rollouts import RolloutService
from .fleet.scopes import ScopeGuard
from .fleet.traces import Traces
from .goals import DeviceView, FleetCache
from .goals.service import GoalService
from .hubmodel import HubModel
from .knowledge import DreamerService, KnowledgeService
from .knowledge.responder import KnowledgeResponder
from .operators import ApiTokens
from .tracing import HubTracing


@dataclass
class FleetViews:
    """The planner's live view of the devices (``GoalService``'s ``devices``): each device's view is
    rebuilt only when its twin changed (placement runs for every result: at 1,000 devices, rebuilding
    every view each time stalled the hub), with the labels the hub assigned it (``credentials``:
    what a goal's scope places by)."""

    watcher: DeviceWatcher
    devices: DeviceRegistry
    credentials: CredentialsView
    cache: FleetCache = field(default_factory=FleetCache)

    async def __call__(self) -> list[DeviceView]:
        now, labels = time.time(), self.credentials.labels_of
        if self.watcher.synced:
            return self.cache.views(self.watcher.twins(), now, labels)
        return [DeviceView.from_twin(d.twin, now, labels(d.device_id)) for d in await self.devices.all(now)]


@dataclass
class HubServices:
    """Everything the API and the daemon's run call into (see the module docstring)."""

    js: JetStreamContext
    agents: AgentRegistry
    watcher: DeviceWatcher
    """The live view of the device twins (a KV watch)."""
    devices: DeviceRegistry
    migrations: MigrationService
    commands: Commands
    traces: Traces
    tokens: ApiTokens
    identity: DeviceIdentity
    scopes: ScopeGuard
    """The scope checks of operators' calls (``fleet/scopes.py``)."""
    goals: GoalService
    """Planning and dispatch of goals (``[planner]``)."""
    policies: FleetPolicies
    """Fleet policy: pushes, rollbacks, status (``fleet/policies.py``)."""
    recovery: DeviceRecoveryView
    """What the hub holds of a device, for that device's recovery (``GetDeviceRecovery``)."""
    rollouts: RolloutService
    """Parity-gated model rollouts: shadow, gate, promote or halt, rollback (``fleet/rollouts.py``)."""
    models: FleetModels
    """Models the hub stores and sends to devices (``fleet/models.py``)."""
    model: HubModel
    """The hub's model (``[planner]``'s), loaded at first use, shared by planning and escalation."""
    escalation: EscalationService | None = None
    """Answers the edges' escalated steps with ``model`` (``[escalation]``)."""
    knowledge: KnowledgeService | None = None
    """The L4 graph (``[neo4j]``), once it has started."""
    responder: KnowledgeResponder | None = None
    """Answers the agents' knowledge tool (NATS request/reply), with the graph."""
    dreamer: DreamerService | None = None
    """Consolidation of L3 episodes into L4 facts (``[dreamer]``; needs the graph)."""

    @classmethod
    def build(
        cls,
        js: JetStreamContext,
        cfg: HubConfig,
        trust: Trust,
        ca: CertificateAuthority,
        nats_urls: list[str],
        metrics: CollectorRegistry,
        *,
        nats_ca: bytes | None = None,
        tracing: HubTracing | None = None,
    ) -> HubServices:
        """``nats_ca``: the CA of the NATS servers' certificates handed to devices (None: ``ca``'s)."""
        agents = AgentRegistry(js)
        traces = Traces(js, agents, keep_days=cfg.retention.events_days)
        credentials = Credentials(js)
        view = CredentialsView(credentials)
        watcher = DeviceWatcher(js, metrics, revoked=view.revoked)
        devices = DeviceRegistry(js, watcher)
        signer = SigningKey.load_or_create(cfg.auth.dir)
        identity = DeviceIdentity(trust, ca, nats_urls, Enrollments(js), credentials, view, nats_ca=nats_ca)
        identity.hub_key = hub_pb2.HubKey(public_key=signer.public_key, key_id=signer.key_id)
        views = FleetViews(watcher, devices, view)
        model = HubModel(cfg.planner)
        goals = GoalService(
            js, views, cfg.planner, issued_by=f"hub:{cfg.hub.id}", metrics=metrics, agents=agents,
            tracing=tracing, model=model,
        )  # fmt: skip
        commands = Commands(js, agents, signer, cfg.auth.decision_ttl_s)
        scopes = ScopeGuard(credentials.labels, view.labels_of, agents)
        return cls(
            js=js,
            agents=agents,
            watcher=watcher,
            devices=devices,
            migrations=MigrationService(js, agents, devices.all),
            commands=commands,
            traces=traces,
            tokens=ApiTokens(js),
            identity=identity,
            scopes=scopes,
            goals=goals,
            policies=FleetPolicies(js, signer, commands, views, scopes),
            recovery=DeviceRecoveryView(js, agents, traces),
            rollouts=RolloutService(
                js,
                commands,
                views,
                devices.all,
                scopes,
                wave_timeout_s=cfg.rollouts.wave_timeout_s,
                check_s=cfg.rollouts.check_s,
            ),
            models=FleetModels(js, commands, views, scopes, spool=None),
            model=model,
        )

    def add_escalation(self, nc: Client, cfg: HubConfig, metrics: CollectorRegistry) -> None:
        """Answer the edges' escalations (``[escalation] enabled``) with the shared model."""
        if cfg.escalation.enabled:
            self.escalation = EscalationService(nc, self.model, cfg.escalation, metrics=metrics)

    async def add_knowledge(
        self, knowledge: KnowledgeService, nc: Client, cfg: HubConfig, metrics: CollectorRegistry
    ) -> None:
        """The graph has started: answer the knowledge tool with it, and consolidate into it."""
        self.knowledge = knowledge
        self.responder = KnowledgeResponder(nc, lambda: knowledge.graph, metrics=metrics)
        if cfg.dreamer.enabled:
            self.dreamer = DreamerService(cfg.dreamer, knowledge.graph, self.js)
            await self.dreamer.start()  # checks the GGUF only; the model loads at the first run

    def runs(self, stop: asyncio.Event) -> list[Coroutine[Any, Any, None]]:
        """The services' background work, each until ``stop``."""
        parts = [
            self.watcher.run(stop),
            self.migrations.run(stop),
            self.goals.run(stop),
            self.rollouts.run(stop),
        ]
        if self.identity.view is not None:
            parts.append(self.identity.view.run(stop))
        if self.responder is not None:
            parts.append(self.responder.run(stop))
        if self.escalation is not None:
            parts.append(self.escalation.run(stop))
        if self.dreamer is not None:
            parts.append(self.dreamer.run(stop))
        return parts

    async def close(self) -> None:
        if self.dreamer is not None:
            await self.dreamer.shutdown()
        await self.goals.close()
        self.model.close()
