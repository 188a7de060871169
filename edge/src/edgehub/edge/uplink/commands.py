"""The hub's commands, applied on this device: fenced by epoch, then handed to the handler of their kind.

``CommandRouter.apply`` is the handler ``edgehub.sync.commands.CommandConsumer`` calls: it returns once
the command's effect is committed (the consumer then acks it), and raises ``MessageRejected`` for a
command refused for good (the consumer dead-letters it with the reason), including a kind this daemon
does not know. Every handler is idempotent: the hub may deliver a command again.

An approval decision is applied only as the hub signed it (``HubDecisions``), and checked before it is
fenced: a forged one changes nothing, not even the agent's standing. Each signed decision resolves one
pending approval once; delivered again it changes nothing, and a replay of it is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from edgehub.protocol.v1 import agent_pb2, commands_pb2
from edgehub.sync.errors import MessageRejected
from edgehub.sync.tracing import traceparent

from ..datadir import DrainFlag
from ..errors import ShadowRefused, StoreError
from ..safety.approvals import ApprovalError, Approver, decide
from ..safety.hubpolicy import HubPolicy
from ..shadow import ShadowReasoner
from ..store.base import DeviceStore
from .decisions import HubDecisions
from .identity import DeviceIdentity
from .migration import migrate_in, migrate_out
from .policy import HubPolicies
from .twin import daemon_version

log = logging.getLogger("edgehub.edge")
S = agent_pb2
Handler = Callable[[commands_pb2.Command], Awaitable[None]]
ABOUT_AGENT = ("stop_agent", "migrate_out", "migrate_in", "start_agent")
"""Kinds whose body names the agent they are about (``agent_id``)."""


def agent_of(cmd: commands_pb2.Command) -> str:
    """The agent a command is about ('' for device-wide commands)."""
    kind = cmd.WhichOneof("body")
    if kind == "decide_approval":
        return cmd.decide_approval.key.rsplit("/", 1)[0]
    if kind in ABOUT_AGENT:
        return str(getattr(cmd, kind).agent_id)
    return ""


class Agents(Protocol):
    """What the router needs of the agent scheduler."""

    def submit(
        self,
        goal: str,
        *,
        agent_id: str | None = None,
        budget: agent_pb2.Budget | None = None,
        task_id: str = "",
        tools: list[str] | None = None,
        trace_parent: str = "",
    ) -> str: ...

    async def stop_agent(self, agent_id: str, reason: str) -> agent_pb2.AgentState: ...

    def hold(self, agent_id: str) -> AbstractAsyncContextManager[None]: ...

    def schedule(self) -> None: ...


class CommandRouter:
    """Applies hub commands to this device; also the ``MigrationSite`` its migrations run on."""

    def __init__(
        self,
        store: DeviceStore,
        agents: Agents,
        drain: DrainFlag,
        *,
        device_id: str,
        identity: DeviceIdentity | None,
        keep_consolidated_days: float,
        decisions: HubDecisions | None = None,
        hub_policy: HubPolicy | None = None,
        shadow: ShadowReasoner | None = None,
    ) -> None:
        self.store = store
        self.agents = agents
        self.drain = drain
        self.device_id = device_id
        self.identity = identity
        self.keep_consolidated_days = keep_consolidated_days
        self.decisions = decisions or HubDecisions(identity, device_id)
        self.shadow = shadow
        """The rollouts' shadow model (None: this router runs none)."""
        self.policies = HubPolicies(hub_policy, self.decisions) if hub_policy is not None else None
        """Fleet policy bundles (None: this router applies none)."""
        self.handlers: dict[str, Handler] = {
            "migrate_out": lambda cmd: migrate_out(self, cmd),
            "migrate_in": lambda cmd: migrate_in(self, cmd),
            "start_agent": self._start_agent,
            "drain": self._drain,
            "stop_agent": self._stop_agent,
            "decide_approval": self._decide_approval,
            "prune_episodes": self._prune_episodes,
            "apply_policy": self._apply_policy,
            "shadow_model": self._shadow_model,
        }
        """Command kind (the ``body`` field set) -> its handler."""

    # the MigrationSite a migration runs on -------------------------------------------------------
    @property
    def draining(self) -> bool:
        """Drained by the hub (``DrainFlag``)."""
        return self.drain.on

    def hold(self, agent_id: str) -> AbstractAsyncContextManager[None]:
        """The scheduler's ``hold``."""
        return self.agents.hold(agent_id)

    def schedule(self) -> None:
        """The scheduler's ``schedule``."""
        self.agents.schedule()

    # applying ------------------------------------------------------------------------------------
    async def apply(self, cmd: commands_pb2.Command) -> None:
        """Apply a hub command; returns once its effect is committed (then the command is acked)."""
        kind = cmd.WhichOneof("body")
        log.info("command %s from %s: %s", cmd.command_id, cmd.issued_by or "hub", kind)
        handler = self.handlers.get(kind or "")
        if handler is None:  # a newer hub's command this daemon does not know: dead letters, with the reason
            raise MessageRejected(f"unknown command {kind or '(empty)'}; this daemon is {daemon_version()}")
        if kind != "decide_approval":  # verified first, then fenced (``_decide_approval``)
            await self.fence(cmd)
        await handler(cmd)

    async def fence(self, cmd: commands_pb2.Command) -> None:
        """Fencing: a command about an agent carries its epoch as the hub knows it. Older than this
        device's copy: refused. Newer: this copy is stale (the agent moved on without it), so it
        stands down: stopped, marked MIGRATED, never run here again. A copy that left with a
        migration takes no commands but that migration's own."""
        kind = cmd.WhichOneof("body")
        agent_id = agent_of(cmd)
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
            async with self.agents.hold(agent_id):
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

    # the handlers --------------------------------------------------------------------------------
    async def _start_agent(self, cmd: commands_pb2.Command) -> None:
        start = cmd.start_agent
        if self.store.has_agent(start.agent_id):
            return  # started before: the command came again
        if self.drain.on:
            raise MessageRejected(f"device {self.device_id} is draining: {start.agent_id} not started")
        self.agents.submit(
            start.goal,
            agent_id=start.agent_id,
            budget=start.budget,
            task_id=start.task_id,
            tools=list(start.tools.names) if start.HasField("tools") else None,
            trace_parent=traceparent(),  # the hub's task span, from the command's headers (validated)
        )

    async def _drain(self, cmd: commands_pb2.Command) -> None:
        self.drain.set(not cmd.drain.resume, cmd.drain.reason)

    async def _stop_agent(self, cmd: commands_pb2.Command) -> None:
        stop = cmd.stop_agent
        if self.store.has_agent(stop.agent_id):
            await self.agents.stop_agent(stop.agent_id, stop.reason or "stopped by the hub")

    async def _decide_approval(self, cmd: commands_pb2.Command) -> None:
        d = await self.decisions.verified(cmd)
        found = self.store.get_approval(d.key)
        if found is None:
            raise MessageRejected(f"no approval {d.key} on device {self.device_id}")
        if found.status != "pending":
            if found.decision_id == d.decision_id:
                return  # applied before: the command came again (delivered again, or replayed)
            raise MessageRejected(
                f"approval {d.key} was already {found.status} by {found.decided_by}: "
                f"decision {d.decision_id} not applied (replayed?)"
            )
        await self.fence(cmd)
        approver = Approver(d.approver, "hub", d.decision_id)
        try:
            decide(self.store, d.key, approve=d.approve, approver=approver, note=d.note)
        except (ApprovalError, StoreError) as exc:  # decided meanwhile, or the decision used before
            raise MessageRejected(f"decision {d.decision_id} not applied: {exc.message}") from None
        log.warning(
            "approval %s %s by %s (signed by the hub)",
            d.key,
            "approved" if d.approve else "denied",
            d.approver,
        )

    async def _apply_policy(self, cmd: commands_pb2.Command) -> None:
        if self.policies is None:
            raise MessageRejected(f"device {self.device_id} keeps no fleet policy")
        await self.policies.command(cmd)

    async def _shadow_model(self, cmd: commands_pb2.Command) -> None:
        """A rollout's shadow model (``shadow.py``): refused for good (dead letters) with the reason."""
        if self.shadow is None:
            raise MessageRejected(f"device {self.device_id} runs no shadow models")
        try:
            await self.shadow.command(cmd.shadow_model)
        except ShadowRefused as exc:
            raise MessageRejected(f"shadow model refused: {exc.message}") from None

    async def _prune_episodes(self, cmd: commands_pb2.Command) -> None:
        prune = cmd.prune_episodes
        keep_s = self.keep_consolidated_days * 86400
        marked, deleted = self.store.prune_episodes(list(prune.keys), prune.run_id, keep_s=keep_s)
        log.info(
            "consolidation %s: %d episodes pruned, %d deleted (retention %.1f days)",
            prune.run_id,
            marked,
            deleted,
            self.keep_consolidated_days,
        )
