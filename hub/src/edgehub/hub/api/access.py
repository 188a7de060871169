"""Who may call the management API: bearer tokens for operators (``operators.py`` keeps them), client
certificates for devices, and the role each method requires (declared in hub.proto with the
``required_role`` method option, so the rule lives with the API definition). Device identity
(enrollment, credentials, revocation) is ``fleet/identity.py``.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from cryptography import x509
from google.protobuf.message import DecodeError

from edgehub.protocol.errors import ErrorCode
from edgehub.protocol.v1 import hub_pb2
from edgehub.sync.tls import BACKDATE

from ..errors import Refused
from ..fleet.identity import Credentials
from ..operators import ANONYMOUS, ApiTokens, Principal, Role, role_name

log = logging.getLogger("edgehub.hub.api.access")

_current: contextvars.ContextVar[Principal] = contextvars.ContextVar("principal", default=ANONYMOUS)


def current() -> Principal:
    """The authenticated caller of the API call being served."""
    return _current.get()


def required_roles() -> dict[str, int]:
    """``/edgehub.v1.HubService/Method`` -> its declared role."""
    service = hub_pb2.DESCRIPTOR.services_by_name["HubService"]
    return {
        f"/{service.full_name}/{m.name}": m.GetOptions().Extensions[hub_pb2.required_role]
        for m in service.methods
    }


Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


class AccessInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates each HubService call and checks its declared role before the handler runs.

    Bearer token (``authorization: Bearer eht_...``) -> operator principal; else a client certificate
    the server verified against the hub's CA -> ``device:<CN>``; else anonymous. Calls outside
    HubService (health, reflection) pass through.
    """

    def __init__(self, tokens: ApiTokens, credentials: Credentials | None = None) -> None:
        self.tokens = tokens
        self.credentials = credentials
        self.roles = required_roles()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method
        if method not in self.roles or handler is None:
            return handler
        if handler.unary_unary is None and handler.stream_unary is None:
            return handler
        required = self.roles[method]
        bearer = next(
            (str(v) for k, v in details.invocation_metadata or () if k == "authorization"), ""
        )  # fmt: skip

        async def caller(context: grpc.aio.ServicerContext) -> Principal:
            principal = await self._principal(bearer, context)
            if not principal.may(required):
                code = (
                    grpc.StatusCode.UNAUTHENTICATED
                    if principal is ANONYMOUS
                    else grpc.StatusCode.PERMISSION_DENIED
                )
                await context.abort(
                    code,
                    f"{method.rsplit('/', 1)[1]} needs role {role_name(required)}; caller {principal.name}",
                )
            return principal

        if handler.stream_unary is not None:  # an upload (AddModel): checked before its first chunk
            streamed: Handler = handler.stream_unary

            async def checked_stream(requests: Any, context: grpc.aio.ServicerContext) -> Any:
                token = _current.set(await caller(context))
                try:
                    return await streamed(requests, context)
                finally:
                    _current.reset(token)

            return grpc.stream_unary_rpc_method_handler(
                checked_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        inner: Handler = handler.unary_unary
        parse = handler.request_deserializer

        async def checked(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            principal = await caller(context)
            request = await _decoded(parse, raw, method, context)
            token = _current.set(principal)
            try:
                return await inner(request, context)
            finally:
                _current.reset(token)

        # the request is decoded after the caller is authenticated (``_decoded``), not by gRPC before
        return grpc.unary_unary_rpc_method_handler(
            checked,
            request_deserializer=None,
            response_serializer=handler.response_serializer,
        )

    async def _principal(self, bearer: str, context: grpc.aio.ServicerContext) -> Principal:
        if bearer:
            scheme, _, token = bearer.partition(" ")
            try:
                if scheme.lower() != "bearer":
                    raise Refused(ErrorCode.UNAUTHENTICATED, "unknown or malformed bearer token")
                return await self.tokens.authenticate(token.strip())
            except Refused as refused:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, refused.message)
                raise  # not reached: abort raises
        auth = context.auth_context()
        names = auth.get("x509_common_name") or []
        if names:
            device_id = names[0].decode()
            if self.credentials is not None:
                revoked = await self.credentials.revoked_at(device_id)
                pem = (auth.get("x509_pem_cert") or [b""])[0]
                if revoked is not None and _issued_at(pem) <= revoked:
                    await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"device {device_id} is revoked")
            return Principal(f"device:{device_id}", Role.ROLE_DEVICE)
        return ANONYMOUS


async def _decoded(
    parse: Callable[[bytes], Any] | None, raw: bytes, method: str, context: grpc.aio.ServicerContext
) -> Any:
    """The request decoded, else INVALID_ARGUMENT saying so (not the parser's internals)."""
    if parse is None:
        return raw
    try:
        return parse(raw)
    except DecodeError:
        name = method.rsplit("/", 1)[1]
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{name}: the request is not a valid message (a string field that is not UTF-8?)",
        )
        raise  # not reached: abort raises


def _issued_at(pem: bytes) -> float:
    """When a client certificate was issued (0: unreadable, so a revocation covers it)."""
    try:
        start = x509.load_pem_x509_certificate(pem).not_valid_before_utc
    except ValueError:
        return 0.0
    return (start + BACKDATE).timestamp()
