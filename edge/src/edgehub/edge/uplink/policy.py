"""Fleet policy from the hub, as this device takes it: ``ApplyPolicy`` commands, and at start (then
every ``CHECK_S``) the hub's latest bundle for this device (``GetPolicy`` on the device API), so a
device that was offline during a push converges when it comes back, whatever its commands stream
still holds.

Both go through ``HubPolicy.apply`` with the hub's key (``HubDecisions.key``: the one key, and the
one way to get it, that approval decisions are checked with). A refused bundle leaves the policy in
force; the command is dead-lettered with the reason and the twin reports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import grpc

from edgehub.protocol.errors import EdgehubError
from edgehub.protocol.v1 import commands_pb2, hub_pb2, policy_pb2
from edgehub.sync.decisions import DecisionRefused
from edgehub.sync.policies import PolicyRefused, peek_version

from ..safety.hubpolicy import HubPolicy
from .api import DeviceApi
from .decisions import HubDecisions
from .identity import DeviceIdentity

log = logging.getLogger("edgehub.edge.uplink.policy")
CHECK_S = 300.0
"""How often a running daemon asks the hub for its latest bundle (besides its commands)."""
FetchPolicy = Callable[[DeviceIdentity], Awaitable[policy_pb2.SignedPolicy]]


async def fetch_policy(identity: DeviceIdentity) -> policy_pb2.SignedPolicy:
    """The hub's latest bundle for this device (empty: none), from its device API."""
    async with DeviceApi(identity) as api:
        return await api.stub.GetPolicy(hub_pb2.GetPolicyRequest(), timeout=api.timeout_s)


class HubPolicies:
    """Applies the hub's policy bundles on this device."""

    def __init__(
        self, hub_policy: HubPolicy, decisions: HubDecisions, fetch: FetchPolicy = fetch_policy
    ) -> None:
        self.hub_policy = hub_policy
        self.decisions = decisions
        self.fetch = fetch

    async def apply(self, signed: policy_pb2.SignedPolicy) -> bool:
        """Apply ``signed`` (True: now in force; False: in force already); ``PolicyRefused`` otherwise."""
        try:
            key = await self.decisions.key()
        except DecisionRefused as exc:  # no key to be had: refused as any unverifiable bundle
            refused = PolicyRefused(exc.reason, peek_version(signed))
            self.hub_policy.refuse(refused)
            raise refused from None
        return self.hub_policy.apply(signed, key)

    async def command(self, cmd: commands_pb2.Command) -> None:
        """The ``apply_policy`` command's handler."""
        if await self.apply(cmd.apply_policy.policy):
            log.warning("policy bundle from command %s (by %s) in force", cmd.command_id, cmd.issued_by)

    async def converge(self, stop: asyncio.Event, *, retry_s: float = 2.0, every_s: float = CHECK_S) -> None:
        """At start, then every ``every_s``: ask the hub for this device's latest bundle and apply it
        (the same one again changes nothing), trying again sooner while the hub is out of reach. A
        refusal is reported like any other. The periodic check covers a daemon that stayed up offline
        longer than the commands stream keeps its command."""
        identity = self.decisions.identity
        if identity is None or not identity.device_api:
            return
        delay = retry_s
        while not stop.is_set():
            try:
                signed = await self.fetch(identity)
                if signed.bundle:
                    await self.apply(signed)
                delay = every_s
            except PolicyRefused:  # reported in the twin
                delay = every_s
            except (grpc.aio.AioRpcError, EdgehubError, OSError) as exc:
                log.info("the hub's policy for this device not fetched (%s); trying again", exc)
                delay = min(max(delay * 2, retry_s), 60.0) if delay < every_s else retry_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
