"""What the hub holds of this device (``GetDeviceRecovery`` on the device API, as the device its client
certificate names): the last outbox sequence the hub applied from it, and for recovery its agents with
the step events the hub received. The daemon asks for the sequence as it starts (``applied_seq``), so
a store that went back in time together with its watermark is caught; ``edge doctor --store
--recover-from-hub`` asks for everything (``holdings``)."""

from __future__ import annotations

import grpc

from edgehub.protocol.v1 import hub_pb2

from .api import DeviceApi, HubApiError
from .identity import DeviceIdentity

H = hub_pb2
START_CHECK_S = 5.0
"""How long the daemon waits for the hub's answer as it starts (offline: it goes on without it)."""


async def _ask(
    identity: DeviceIdentity | None, request: H.GetDeviceRecoveryRequest, timeout_s: float
) -> H.DeviceRecovery:
    async with DeviceApi(identity, timeout_s) as api:
        try:
            answer: H.DeviceRecovery = await api.stub.GetDeviceRecovery(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise HubApiError(f"the hub's device API at {identity.device_api if identity else '?'}: "
                              f"{exc.code().name}: {exc.details()}") from None  # fmt: skip
    return answer


async def applied_seq(identity: DeviceIdentity | None, timeout_s: float = START_CHECK_S) -> int:
    """The last outbox sequence the hub applied from this device. ``HubApiError`` when the device is
    not enrolled or the hub does not answer."""
    answer = await _ask(identity, H.GetDeviceRecoveryRequest(applied_only=True), timeout_s)
    return int(answer.applied_seq)


async def holdings(
    identity: DeviceIdentity | None, next_steps: dict[str, int], timeout_s: float = 60.0
) -> H.DeviceRecovery:
    """Everything the hub holds of this device: the applied sequence, its agents, and each agent's
    step events from ``next_steps[agent]`` (the step its checkpoint here would run next; 0 when the
    store has no such agent). ``HubApiError`` as ``applied_seq``."""
    return await _ask(identity, H.GetDeviceRecoveryRequest(next_steps=next_steps), timeout_s)
