"""The hub's approval decisions as this device takes them: verified against the hub's signing key
(``edgehub.sync.decisions``) before anything about them is applied (``CommandRouter``).

The key is the one enrollment gave (``identity/hub.pub``); a device enrolled before the hub signed
decisions fetches it once over the hub's device API (``GetHubKey``, mutual TLS) and keeps it. While the
hub cannot be reached the decision waits (the command comes back later); a device not enrolled has no
key and refuses every decision from the hub (decide on the device instead: ``[safety] local_approvals``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import grpc

from edgehub.protocol.errors import EdgehubError
from edgehub.protocol.v1 import commands_pb2, hub_pb2
from edgehub.sync.decisions import DecisionRefused, HubKey

from .api import DeviceApi
from .identity import DeviceIdentity

TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
"""Errors fetching the hub's key that a later try may not meet (the decision waits meanwhile)."""

FetchKey = Callable[[DeviceIdentity], Awaitable[bytes]]


async def fetch_hub_key(identity: DeviceIdentity) -> bytes:
    """The hub's raw public signing key, from its device API."""
    async with DeviceApi(identity) as api:
        reply = await api.stub.GetHubKey(hub_pb2.GetHubKeyRequest(), timeout=api.timeout_s)
    return bytes(reply.public_key)


class HubDecisions:
    """This device's check of the hub's signed approval decisions."""

    def __init__(
        self,
        identity: DeviceIdentity | None,
        device_id: str,
        fetch: FetchKey = fetch_hub_key,
        key: HubKey | None = None,
    ) -> None:
        self.identity = identity
        self.device_id = device_id
        self.fetch = fetch
        self._key = key
        """The hub's key once known (given, kept in the identity folder, or fetched)."""

    async def key(self) -> HubKey:
        """The hub's key: kept, else fetched and kept. The hub out of reach is no refusal (the command
        is tried again); no key to be had is (``DecisionRefused``, the approval stays pending)."""
        if self._key is None:
            if self.identity is None:
                raise DecisionRefused(
                    f"device {self.device_id} is not enrolled with a hub: it has no key to verify the hub's "
                    "decisions with (enroll it, or decide on the device)"
                )
            try:
                self._key = self.identity.hub_key() or self.identity.keep_hub_key(
                    await self.fetch(self.identity)
                )
            except EdgehubError as exc:  # an unreadable key file, no device API, a key that is none
                raise DecisionRefused(f"no hub key to verify decisions with: {exc.message}") from None
            except grpc.aio.AioRpcError as exc:
                if exc.code() in TRANSIENT:
                    raise
                raise DecisionRefused(f"the hub gave no key: {exc.code().name}: {exc.details()}") from None
        return self._key

    async def verified(self, cmd: commands_pb2.Command) -> commands_pb2.ApprovalDecision:
        """The decision ``cmd`` carries, signed by the hub for this device and fresh; else
        ``DecisionRefused`` (the command is dead-lettered with the reason)."""
        if not cmd.decide_approval.signature:  # before any key is fetched: an older hub, or a forgery
            raise DecisionRefused("an approval decision without the hub's signature")
        return (await self.key()).verify(cmd, self.device_id, time.time())
