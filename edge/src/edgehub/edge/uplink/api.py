"""The hub's API as this device calls it: on the hub's device port, mutual TLS with the client
certificate from enrollment (``identity/device.pem``/``device.key``, the hub's ``ca.pem``).

Used for what does not fit a NATS message: an agent's state in a migration (up to
``MAX_HANDOVER_BYTES``). Errors come back as ``grpc.aio.AioRpcError`` with the hub's status code;
``HubApiError`` when this device has no way to call it (not enrolled). Each call carries the current
trace context as W3C ``traceparent`` metadata (``TraceMetadata``): a migration's handover is part of the
trace of the hub command that asked for it."""

from __future__ import annotations

from types import TracebackType
from typing import Any

import grpc

from edgehub.protocol.v1 import hub_pb2, hub_pb2_grpc
from edgehub.sync import tracing
from edgehub.sync.streams import MAX_HANDOVER_BYTES

from ..errors import EdgeError
from .identity import DeviceIdentity

H = hub_pb2


class HubApiError(EdgeError):
    pass


class TraceMetadata(grpc.aio.UnaryUnaryClientInterceptor):
    """Sends the current span's W3C trace context as the call's metadata (nothing when there is none)."""

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        trace = tracing.inject({})
        if trace:
            metadata = grpc.aio.Metadata(*(details.metadata or ()), *trace.items())
            details = grpc.aio.ClientCallDetails(
                details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
            )
        return await continuation(details, request)


class DeviceApi:
    """``async with DeviceApi(identity) as api: await api.stub.PutHandover(...)``."""

    def __init__(self, identity: DeviceIdentity | None, timeout_s: float = 30.0) -> None:
        if identity is None or not identity.device_api:
            raise HubApiError("this device is not enrolled with a hub (`edgehub edge enroll`): no device API")
        folder = identity.folder
        try:
            creds = grpc.ssl_channel_credentials(
                root_certificates=(folder / "ca.pem").read_bytes(),
                private_key=(folder / "device.key").read_bytes(),
                certificate_chain=(folder / "device.pem").read_bytes(),
            )
        except OSError as exc:
            raise HubApiError(f"{folder}: the device's credentials are unreadable ({exc.strerror})") from None
        size = MAX_HANDOVER_BYTES + 1024 * 1024
        self.channel = grpc.aio.secure_channel(
            identity.device_api,
            creds,
            options=[("grpc.max_receive_message_length", size), ("grpc.max_send_message_length", size)],
            interceptors=[TraceMetadata()],
        )
        self.stub = hub_pb2_grpc.HubServiceStub(self.channel)
        self.timeout_s = timeout_s

    async def __aenter__(self) -> DeviceApi:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.channel.close()
