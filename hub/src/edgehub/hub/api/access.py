"""Who may call the management API: bearer tokens for operators, client certificates for devices,
one-time enrollment tokens, and the role each method requires (declared in hub.proto with the
``required_role`` method option, so the rule lives with the API definition).

Tokens are random (``eht_`` operators, ``ehe_`` enrollment) and stored only as SHA-256 in JetStream
KV, so every hub process sees the same ones and a leaked bucket reveals none. An enrollment token is
spent with compare-and-delete: two devices racing with one token cannot both enroll.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from nats.js import JetStreamContext
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

from edgehub.protocol.ids import kv_key
from edgehub.protocol.v1 import hub_pb2
from edgehub.sync.auth import write_secret
from edgehub.sync.streams import CREDENTIALS, ENROLLMENTS, TOKENS
from edgehub.sync.tls import BACKDATE

from ..errors import EnrollmentRefused

log = logging.getLogger("edgehub.hub.api.access")

Role = hub_pb2.Role
ROLE_NAMES = {"viewer": Role.ROLE_VIEWER, "operator": Role.ROLE_OPERATOR, "admin": Role.ROLE_ADMIN}
MAX_ENROLL_TTL_S = 30 * 24 * 3600
TOKEN_CACHE_S = 5.0


def role_name(role: int) -> str:
    return hub_pb2.Role.Name(role).removeprefix("ROLE_").lower()  # type: ignore[arg-type]


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    name: str
    role: int

    @property
    def device_id(self) -> str | None:
        return self.name.removeprefix("device:") if self.role == Role.ROLE_DEVICE else None

    def may(self, required: int) -> bool:
        if required == Role.ROLE_PUBLIC:
            return True
        if required == Role.ROLE_UNSPECIFIED or self.role in (Role.ROLE_UNSPECIFIED, Role.ROLE_PUBLIC):
            return False
        if self.role == Role.ROLE_DEVICE:
            return required == Role.ROLE_DEVICE
        return self.role >= max(required, Role.ROLE_VIEWER)


ANONYMOUS = Principal("anonymous", Role.ROLE_PUBLIC)
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


class Tokens:
    """Operator bearer tokens and device enrollment tokens in JetStream KV."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self._kv: dict[str, KeyValue] = {}
        self._cache: dict[str, tuple[float, tuple[Principal | None, float]]] = {}

    async def _bucket(self, name: str) -> KeyValue:
        if name not in self._kv:
            self._kv[name] = await self.js.key_value(name)
        return self._kv[name]

    async def create_api_token(
        self, name: str, role: int, created_by: str, ttl_s: float = 0.0
    ) -> tuple[str, float]:
        """A new token and when it expires (0: never)."""
        token = f"eht_{secrets.token_urlsafe(32)}"
        expires = time.time() + ttl_s if ttl_s > 0 else 0.0
        await self.register_api_token(token, name, role, created_by, expires)
        return token, expires

    async def register_api_token(
        self, token: str, name: str, role: int, created_by: str, expires_at: float = 0.0
    ) -> None:
        record = {
            "name": name,
            "role": role_name(role),
            "created_by": created_by,
            "created_at": time.time(),
            "expires_at": expires_at,
        }
        await (await self._bucket(TOKENS.name)).put(digest(token), json.dumps(record).encode())
        self._cache.pop(digest(token), None)

    async def api_tokens(self) -> list[tuple[str, dict[str, Any]]]:
        """(digest, record) of every operator token, by name."""
        kv = await self._bucket(TOKENS.name)
        try:
            keys = await kv.keys()
        except NoKeysError:
            return []
        out = []
        for key in keys:
            with contextlib.suppress(KeyNotFoundError):  # deleted meanwhile
                out.append((key, json.loads((await kv.get(key)).value or b"{}")))
        return sorted(out, key=lambda kr: (kr[1].get("name", ""), kr[1].get("created_at", 0)))

    async def delete_api_tokens(self, name: str) -> int:
        """Delete every token of ``name``; how many there were."""
        kv = await self._bucket(TOKENS.name)
        doomed = [key for key, record in await self.api_tokens() if record.get("name") == name]
        for key in doomed:
            await kv.delete(key)
            self._cache.pop(key, None)
        return len(doomed)

    async def operator(self, token: str) -> Principal | None:
        """The token's operator; None if it was never made, was deleted or has expired."""
        key = digest(token)
        hit = self._cache.get(key)
        if hit and time.monotonic() - hit[0] < TOKEN_CACHE_S:
            principal, expires = hit[1]
            return principal if not expires or time.time() < expires else None
        expires = 0.0
        try:
            entry = await (await self._bucket(TOKENS.name)).get(key)
            record = json.loads(entry.value or b"{}")
            found: Principal | None = Principal(f"operator:{record['name']}", ROLE_NAMES[record["role"]])
            expires = float(record.get("expires_at") or 0)
        except KeyNotFoundError:  # never made, or deleted
            found = None
        self._cache[key] = (time.monotonic(), (found, expires))
        return found if not expires or time.time() < expires else None

    async def create_enrollment(self, device_id: str, ttl_s: float, created_by: str) -> tuple[str, float]:
        token = f"ehe_{secrets.token_urlsafe(32)}"
        expires = time.time() + ttl_s
        record = {"device_id": device_id, "expires_at": expires, "created_by": created_by}
        await (await self._bucket(ENROLLMENTS.name)).put(digest(token), json.dumps(record).encode())
        return token, expires

    async def spend_enrollment(self, token: str, device_id: str) -> None:
        """Consume ``token`` for ``device_id`` exactly once; EnrollmentRefused says why not."""
        kv = await self._bucket(ENROLLMENTS.name)
        key = digest(token)
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            raise EnrollmentRefused("unknown or already used enrollment token") from None
        record = json.loads(entry.value or b"{}")
        if record.get("device_id") != device_id:
            raise EnrollmentRefused(
                f"this token is for device {record.get('device_id')!r}, not {device_id!r}"
            )
        try:
            await kv.delete(key, last=entry.revision)
        except APIError as exc:  # wrong last sequence: another request spent it first
            if exc.err_code in (10071, 10164):
                raise EnrollmentRefused("enrollment token already used") from None
            raise
        if float(record.get("expires_at", 0)) < time.time():
            raise EnrollmentRefused("enrollment token expired")


async def bootstrap_admin(tokens: Tokens, folder: Path) -> Path:
    """Make sure an admin token exists: ``<trust>/admin.token`` (0600), created on first start."""
    path = Path(folder) / "admin.token"
    if path.exists():
        token = path.read_text().strip()
    else:
        token = f"eht_{secrets.token_urlsafe(32)}"
        write_secret(path, token + "\n")
        log.warning("created the first admin API token in %s (keep it secret)", path)
    if await tokens.operator(token) is None:
        await tokens.register_api_token(token, "admin", Role.ROLE_ADMIN, "bootstrap")
    return path


Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


class Credentials:
    """What enrollment issued to each device (its NATS user keys) and whether it is revoked, in KV
    (``edgehub-credentials``, one record per device, updated by compare-and-set), so every hub process
    sees the same. ``revoked_at`` is cached for TOKEN_CACHE_S: a revocation reaches the device API of
    other hub processes within that."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self._kv: KeyValue | None = None
        self._cache: dict[str, tuple[float, float | None]] = {}

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self.js.key_value(CREDENTIALS.name)
        return self._kv

    async def _get(self, device_id: str) -> tuple[dict[str, Any], int]:
        try:
            entry = await (await self._bucket()).get(kv_key(device_id))
        except KeyNotFoundError:
            return {"device_id": device_id, "user_keys": {}, "revoked_at": None}, 0
        return json.loads(entry.value or b"{}"), int(entry.revision or 0)

    async def _update(self, device_id: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        kv = await self._bucket()
        for _ in range(20):  # another hub process may write the same record: compare-and-set, retry
            record, revision = await self._get(device_id)
            change(record)
            data = json.dumps(record).encode()
            try:
                if revision:
                    await kv.update(kv_key(device_id), data, last=revision)
                else:
                    await kv.create(kv_key(device_id), data)
            except (APIError, KeyWrongLastSequenceError):
                continue
            self._cache.pop(device_id, None)
            return record
        raise RuntimeError(f"the credentials record of {device_id} kept changing; try again")

    async def issued(self, device_id: str, user_key: str) -> None:
        """Enrollment gave ``device_id`` the NATS user ``user_key``."""

        def add(record: dict[str, Any]) -> None:
            record["user_keys"][user_key] = time.time()

        await self._update(device_id, add)

    async def revoke(self, device_id: str, by: str, reason: str) -> dict[str, Any]:
        """Revoke every credential issued to the device until now; returns its record."""
        now = time.time()

        def mark(record: dict[str, Any]) -> None:
            record.update(revoked_at=now, revoked_by=by, reason=reason)

        return await self._update(device_id, mark)

    async def revocations(self) -> dict[str, int]:
        """NATS user key -> unix time for every revoked device (what the account JWT carries)."""
        kv = await self._bucket()
        out: dict[str, int] = {}
        try:
            keys = await kv.keys()
        except NoKeysError:
            return out
        for key in keys:
            record = json.loads((await kv.get(key)).value or b"{}")
            at = record.get("revoked_at")
            if at:  # the keys issued before it (a device enrolled again since has a new, valid one)
                out.update({k: int(at) + 1 for k, issued in record["user_keys"].items() if issued <= at})
        return out

    async def revoked_at(self, device_id: str) -> float | None:
        hit = self._cache.get(device_id)
        if hit and time.monotonic() - hit[0] < TOKEN_CACHE_S:
            return hit[1]
        record, _ = await self._get(device_id)
        at = record.get("revoked_at")
        self._cache[device_id] = (time.monotonic(), at)
        return at


class AccessInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates each HubService call and checks its declared role before the handler runs.

    Bearer token (``authorization: Bearer eht_...``) -> operator principal; else a client certificate
    the server verified against the hub's CA -> ``device:<CN>``; else anonymous. Calls outside
    HubService (health, reflection) pass through.
    """

    def __init__(self, tokens: Tokens, credentials: Credentials | None = None) -> None:
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
        if method not in self.roles or handler is None or handler.unary_unary is None:
            return handler
        required = self.roles[method]
        bearer = next(
            (str(v) for k, v in details.invocation_metadata or () if k == "authorization"), ""
        )  # fmt: skip
        inner: Handler = handler.unary_unary

        async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
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
            token = _current.set(principal)
            try:
                return await inner(request, context)
            finally:
                _current.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            checked,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    async def _principal(self, bearer: str, context: grpc.aio.ServicerContext) -> Principal:
        if bearer:
            scheme, _, token = bearer.partition(" ")
            found = await self.tokens.operator(token.strip()) if scheme.lower() == "bearer" else None
            if found is None:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown or malformed bearer token")
            assert found is not None
            return found
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


def _issued_at(pem: bytes) -> float:
    """When a client certificate was issued (0: unreadable, so a revocation covers it)."""
    try:
        start = x509.load_pem_x509_certificate(pem).not_valid_before_utc
    except ValueError:
        return 0.0
    return (start + BACKDATE).timestamp()
