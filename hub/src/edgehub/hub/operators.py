"""Operators: who they are (``Principal``, roles, scopes) and their API tokens, kept in JetStream KV.

Operator tokens are random (``eht_``) and stored only as SHA-256 in ``edgehub-tokens``, so every hub
process sees the same ones and a leaked bucket reveals none. A token may carry a scope: the devices it
reaches (``fleet/scopes.py``). The API authenticates calls with them (``api/access.py``); device
identity is ``fleet/identity.py``.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from nats.js import JetStreamContext

from edgehub.protocol.errors import ErrorCode
from edgehub.protocol.ids import check_id
from edgehub.protocol.v1 import hub_pb2
from edgehub.sync.auth import write_secret
from edgehub.sync.records import JsonObject, ProtoCodec, RecordStore, json_legacy
from edgehub.sync.streams import TOKENS

from .errors import OutOfScope, Refused
from .fleet.identity import digest
from .fleet.scopes import FLEET, Scope

log = logging.getLogger("edgehub.hub.operators")

Role = hub_pb2.Role
ROLE_NAMES = {"viewer": Role.ROLE_VIEWER, "operator": Role.ROLE_OPERATOR, "admin": Role.ROLE_ADMIN}
TOKEN_CACHE_S = 5.0
"""How long a token's lookup is cached: a deleted token stops working on other hub processes within it."""
RECORD_VERSION = 2
"""2: a token may carry a scope (a hub of the release before cannot read these, so it never takes a
scoped token for one of the whole fleet)."""
MAX_TTL_S = 10 * 365 * 24 * 3600.0
"""The longest lifetime a token may be given (0 asks for one that never expires)."""


def role_name(role: int) -> str:
    return hub_pb2.Role.Name(role).removeprefix("ROLE_").lower()  # type: ignore[arg-type]


@dataclass(frozen=True)
class Principal:
    """The caller of an API method, as the hub authenticated it."""

    name: str
    """``operator:NAME`` (its token's name), ``device:ID`` (its certificate's CN) or ``anonymous``."""
    role: int
    scope: Scope = FLEET
    """The devices an operator's token reaches (the whole fleet for devices and anonymous callers:
    their methods check what they may do themselves)."""

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


def _token_from_json(raw: JsonObject) -> hub_pb2.ApiTokenInfo:
    """An operator token as the release before stored it (JSON, the role by its short name)."""
    return hub_pb2.ApiTokenInfo(
        name=str(raw["name"]),
        role=ROLE_NAMES[str(raw["role"])],
        created_by=str(raw.get("created_by", "")),
        created_at=float(raw.get("created_at") or 0),
        expires_at=float(raw.get("expires_at") or 0),
        schema_version=RECORD_VERSION,
    )


TOKENS_CODEC = ProtoCodec(hub_pb2.ApiTokenInfo, RECORD_VERSION, legacy=json_legacy(_token_from_json))


class ApiTokens:
    """Operator bearer tokens in JetStream KV (key: the token's SHA-256), with a short cache."""

    def __init__(self, js: JetStreamContext) -> None:
        self.store = RecordStore(js, TOKENS.name, TOKENS_CODEC, keyed=False)  # keys: digests
        self._cache: dict[str, tuple[float, tuple[Principal | None, float]]] = {}

    async def create(
        self, name: str, role: int, created_by: str, ttl_s: float = 0.0, scope: Scope = FLEET
    ) -> hub_pb2.ApiToken:
        """A new token (shown once) reaching ``scope``, and when it expires (0: never)."""
        if not name.strip() or role not in (Role.ROLE_VIEWER, Role.ROLE_OPERATOR, Role.ROLE_ADMIN):
            raise Refused(ErrorCode.INVALID_ARGUMENT, "name and a role (viewer|operator|admin)")
        check_id(name, "name")
        if not math.isfinite(ttl_s) or not 0 <= ttl_s <= MAX_TTL_S:
            raise Refused(
                ErrorCode.INVALID_ARGUMENT, f"ttl_s must be 0 (never expires) up to {MAX_TTL_S:.0f} seconds"
            )
        token = f"eht_{secrets.token_urlsafe(32)}"
        expires = time.time() + ttl_s if ttl_s > 0 else 0.0
        await self.register(token, name, role, created_by, expires, scope)
        return hub_pb2.ApiToken(
            token=token,
            name=name,
            role=role,  # type: ignore[arg-type]
            expires_at=expires,
            scope=scope.to_proto(),
        )

    async def register(
        self,
        token: str,
        name: str,
        role: int,
        created_by: str,
        expires_at: float = 0.0,
        scope: Scope = FLEET,
    ) -> None:
        record = hub_pb2.ApiTokenInfo(
            name=name,
            role=role,  # type: ignore[arg-type]
            created_by=created_by,
            created_at=time.time(),
            expires_at=expires_at,
            scope=scope.to_proto(),
        )
        await self.store.put(digest(token), record)
        self._cache.pop(digest(token), None)

    async def list(self, within: Scope = FLEET) -> list[hub_pb2.ApiTokenInfo]:
        """Every operator token whose scope is ``within`` (a scoped admin's), by name (``id``: the start
        of its digest; never the secret)."""
        out = []
        for found in await self.store.list():
            info = found.value
            if not Scope.from_proto(info.scope).within(within):
                continue
            info.id = found.key[:12]
            out.append(info)
        return sorted(out, key=lambda t: (t.name, t.created_at))

    async def delete(self, name: str, within: Scope = FLEET) -> int:
        """Delete every token of ``name``; how many there were (NOT_FOUND: none). ``OutOfScope`` and
        none deleted when one of them reaches more than ``within`` (a scoped admin's scope)."""
        if not name:
            raise Refused(ErrorCode.INVALID_ARGUMENT, "name is required")
        named = [found for found in await self.store.list() if found.value.name == name]
        for found in named:
            wider = Scope.from_proto(found.value.scope)
            if not wider.within(within):
                why = f"a token of {name} reaches more than your scope ({within}): {wider}"
                raise OutOfScope(f"DeleteApiTokens: {why}", "", str(within))
        doomed = [found.key for found in named]
        for key in doomed:
            await self.store.delete(key)
            self._cache.pop(key, None)
        if not doomed:
            raise Refused(ErrorCode.NOT_FOUND, f"no token named {name!r}")
        return len(doomed)

    async def operator(self, token: str) -> Principal | None:
        """The token's operator; None if it was never made, was deleted or has expired."""
        principal, expires = await self._lookup(token)
        return principal if not expires or time.time() < expires else None

    async def authenticate(self, token: str) -> Principal:
        """The token's operator, else ``UNAUTHENTICATED`` saying whether it expired or is unknown."""
        principal, expires = await self._lookup(token)
        if principal is None:
            raise Refused(ErrorCode.UNAUTHENTICATED, "unknown or malformed bearer token")
        if expires and time.time() >= expires:
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
            raise Refused(ErrorCode.UNAUTHENTICATED, f"the bearer token expired at {when}")
        return principal

    async def _lookup(self, token: str) -> tuple[Principal | None, float]:
        """(the token's operator or None, when it expires: 0 never), cached ``TOKEN_CACHE_S``."""
        key = digest(token)
        hit = self._cache.get(key)
        if hit and time.monotonic() - hit[0] < TOKEN_CACHE_S:
            return hit[1]
        found = await self.store.get(key)
        principal, expires = None, 0.0
        if found is not None:  # else never made, or deleted
            scope = Scope.from_proto(found.value.scope)
            principal = Principal(f"operator:{found.value.name}", found.value.role, scope)
            expires = found.value.expires_at
        self._cache[key] = (time.monotonic(), (principal, expires))
        return principal, expires


async def bootstrap_admin(tokens: ApiTokens, folder: Path) -> Path:
    """Make sure an admin token exists: ``<trust>/admin.token`` (0600), created on first start."""
    path = Path(folder) / "admin.token"
    if path.exists():
        token = path.read_text().strip()
    else:
        token = f"eht_{secrets.token_urlsafe(32)}"
        write_secret(path, token + "\n")
        log.warning("created the first admin API token in %s (keep it secret)", path)
    if await tokens.operator(token) is None:
        await tokens.register(token, "admin", Role.ROLE_ADMIN, "bootstrap")
    return path
