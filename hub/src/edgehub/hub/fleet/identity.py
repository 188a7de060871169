"""Device identity, the hub's end (the edge's is ``edgehub.edge.uplink.identity``): one-time enrollment
tokens, what enrollment issues (NATS credentials for the key the device sent, a client certificate for
its CSR), and revocation.

Enrollment tokens are random (``ehe_``) and stored only as SHA-256 in JetStream KV
(``edgehub-enrollments``), so every hub process sees the same ones and a leaked bucket reveals none; a
token is spent with compare-and-delete, so two devices racing with one token cannot both enroll. What
each device was issued, and whether it is revoked, is one record per device (``edgehub-credentials``)
changed by compare-and-set.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.js import JetStreamContext

from edgehub.protocol.errors import ErrorCode
from edgehub.protocol.ids import id_of_key
from edgehub.protocol.v1 import hub_pb2, records_pb2
from edgehub.sync.auth import AuthError, Trust, inbox_prefix, is_user_key
from edgehub.sync.errors import SyncError
from edgehub.sync.records import JsonObject, ProtoCodec, RecordConflict, RecordStore, Stored, json_legacy
from edgehub.sync.streams import CREDENTIALS, ENROLLMENTS
from edgehub.sync.tls import CertificateAuthority

from ..errors import EnrollmentRefused, Refused

log = logging.getLogger("edgehub.hub.fleet.identity")
R = records_pb2
MAX_ENROLL_TTL_S = 30 * 24 * 3600
DEFAULT_ENROLL_TTL_S = 3600
CACHE_S = 5.0
"""How long a device's revocation is cached: a revocation reaches other hub processes within it."""
RECORD_VERSION = 1


def digest(token: str) -> str:
    """The key a token is stored under (its SHA-256): the bucket never holds the secret."""
    return hashlib.sha256(token.encode()).hexdigest()


def _enrollment_from_json(raw: JsonObject) -> records_pb2.EnrollmentRecord:
    return R.EnrollmentRecord(
        schema_version=RECORD_VERSION,
        device_id=str(raw["device_id"]),
        expires_at=float(raw.get("expires_at", 0)),
        created_by=str(raw.get("created_by", "")),
    )


def _credentials_from_json(raw: JsonObject) -> records_pb2.DeviceCredentials:
    return R.DeviceCredentials(
        schema_version=RECORD_VERSION,
        device_id=str(raw["device_id"]),
        user_keys={str(k): float(v) for k, v in (raw.get("user_keys") or {}).items()},
        revoked_at=float(raw.get("revoked_at") or 0),
        revoked_by=str(raw.get("revoked_by", "")),
        reason=str(raw.get("reason", "")),
    )


ENROLLMENTS_CODEC = ProtoCodec(R.EnrollmentRecord, RECORD_VERSION, legacy=json_legacy(_enrollment_from_json))
CREDENTIALS_CODEC = ProtoCodec(
    R.DeviceCredentials, RECORD_VERSION, legacy=json_legacy(_credentials_from_json)
)


class Enrollments:
    """One-time enrollment tokens (see the module docstring)."""

    def __init__(self, js: JetStreamContext) -> None:
        self.store = RecordStore(js, ENROLLMENTS.name, ENROLLMENTS_CODEC, keyed=False)  # keys: digests

    async def create(self, device_id: str, ttl_s: float, created_by: str) -> tuple[str, float]:
        """A new token for ``device_id`` and when it expires."""
        token = f"ehe_{secrets.token_urlsafe(32)}"
        expires = time.time() + ttl_s
        record = R.EnrollmentRecord(device_id=device_id, expires_at=expires, created_by=created_by)
        await self.store.put(digest(token), record)
        return token, expires

    async def spend(self, token: str, device_id: str) -> None:
        """Consume ``token`` for ``device_id`` exactly once; EnrollmentRefused says why not."""
        found = await self.store.get(digest(token))
        if found is None:
            raise EnrollmentRefused("unknown or already used enrollment token")
        if found.value.device_id != device_id:
            raise EnrollmentRefused(f"this token is for device {found.value.device_id!r}, not {device_id!r}")
        try:
            await self.store.delete(digest(token), revision=found.revision)
        except RecordConflict:  # another request spent it first
            raise EnrollmentRefused("enrollment token already used") from None
        if found.value.expires_at < time.time():
            raise EnrollmentRefused("enrollment token expired")


class Credentials:
    """What enrollment issued to each device (its NATS user keys) and whether it is revoked (see the
    module docstring). ``revoked_at`` is cached for ``CACHE_S``."""

    def __init__(self, js: JetStreamContext) -> None:
        self.store = RecordStore(js, CREDENTIALS.name, CREDENTIALS_CODEC)
        self._cache: dict[str, tuple[float, float | None]] = {}

    async def _update(
        self, device_id: str, change: Callable[[records_pb2.DeviceCredentials], None]
    ) -> records_pb2.DeviceCredentials:
        def changed(found: Stored[records_pb2.DeviceCredentials] | None) -> records_pb2.DeviceCredentials:
            record = R.DeviceCredentials(device_id=device_id)
            if found is not None:
                record.CopyFrom(found.value)
            change(record)
            return record

        stored = await self.store.update(device_id, changed)
        self._cache.pop(device_id, None)
        assert stored is not None  # ``changed`` always writes
        return stored.value

    async def issued(self, device_id: str, user_key: str) -> None:
        """Enrollment gave ``device_id`` the NATS user ``user_key``."""
        now = time.time()

        def add(record: records_pb2.DeviceCredentials) -> None:
            record.user_keys[user_key] = now

        await self._update(device_id, add)

    async def revoke(self, device_id: str, by: str, reason: str) -> records_pb2.DeviceCredentials:
        """Revoke every credential issued to the device until now; returns its record."""
        now = time.time()

        def mark(record: records_pb2.DeviceCredentials) -> None:
            record.revoked_at, record.revoked_by, record.reason = now, by, reason

        return await self._update(device_id, mark)

    async def revocations(self) -> dict[str, int]:
        """NATS user key -> unix time for every revoked device (what the account JWT carries)."""
        out: dict[str, int] = {}
        for found in await self.store.list():
            at = found.value.revoked_at
            if at:  # the keys issued before it (a device enrolled again since has a new, valid one)
                out.update({k: int(at) + 1 for k, issued in found.value.user_keys.items() if issued <= at})
        return out

    async def revoked_at(self, device_id: str) -> float | None:
        """When the device's credentials were revoked (None: they are not)."""
        hit = self._cache.get(device_id)
        if hit and time.monotonic() - hit[0] < CACHE_S:
            return hit[1]
        found = await self.store.get(device_id)
        at = (found.value.revoked_at or None) if found is not None else None
        self._cache[device_id] = (time.monotonic(), at)
        return at


def is_revoked(record: records_pb2.DeviceCredentials) -> bool:
    """Revoked, and not enrolled again since (every user key it holds was issued before the revocation)."""
    at = record.revoked_at
    return bool(at) and all(issued <= at for issued in record.user_keys.values())


class RevokedDevices:
    """The ids of the revoked devices (``is_revoked``), as a set the device views read without I/O
    (``in``): loaded from the credentials bucket every ``refresh_s`` (so a revocation on another hub
    process shows within it) and at once when this process revokes a device (``add``)."""

    def __init__(self, credentials: Credentials, refresh_s: float = CACHE_S) -> None:
        self.credentials = credentials
        self.refresh_s = refresh_s
        self.ids: frozenset[str] = frozenset()

    def __contains__(self, device_id: object) -> bool:
        return device_id in self.ids

    def add(self, device_id: str) -> None:
        self.ids = self.ids | {device_id}

    def discard(self, device_id: str) -> None:
        """Enrolled again: its new credentials are valid."""
        self.ids = self.ids - {device_id}

    async def refresh(self) -> None:
        records = await self.credentials.store.list()
        self.ids = frozenset(id_of_key(s.key) for s in records if is_revoked(s.value))

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh until ``stop`` (a failed read keeps the last set: NATS is briefly away)."""
        while not stop.is_set():
            try:
                await self.refresh()
            except Exception as exc:  # NATS unreachable: the next round tries again
                log.debug("revoked devices not refreshed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.refresh_s)


def _invalid(message: str) -> Refused:
    return Refused(ErrorCode.INVALID_ARGUMENT, message)


@dataclass
class DeviceIdentity:
    """What enrollment hands out (NATS credentials, client certificates, where to connect), and takes
    back (revocation)."""

    trust: Trust
    ca: CertificateAuthority
    nats_urls: list[str]
    enrollments: Enrollments
    credentials: Credentials
    revoked: RevokedDevices | None = None
    """The revoked devices' ids the device views read; told at once of a revocation here."""
    nats_ca: bytes | None = None
    """The CA (bundle) of the NATS servers' certificates, handed to devices (None: ``ca``'s)."""
    device_api: str = ""
    """Where devices call the API with their client certificate (set by ``api.serve``)."""
    apply_revocations: Callable[[dict[str, int]], Awaitable[bool]] | None = None
    """Loads revocations into the hub's embedded nats-server (True: done); None: NATS is external."""

    async def enrollment_token(self, device_id: str, ttl_s: int, by: str) -> hub_pb2.EnrollmentToken:
        if not device_id or ttl_s > MAX_ENROLL_TTL_S:
            raise _invalid("device_id, and ttl_s at most 30 days")
        token, expires = await self.enrollments.create(device_id, ttl_s or DEFAULT_ENROLL_TTL_S, by)
        return hub_pb2.EnrollmentToken(
            token=token, device_id=device_id, expires_at=expires, ca_pem=self.ca.pem.decode()
        )

    async def enroll(self, req: hub_pb2.EnrollRequest) -> hub_pb2.EnrollResponse:
        """Trade a one-time token for the device's credentials (checked before the token is spent)."""
        if not req.token or not req.device_id or not is_user_key(req.nats_user_key):
            raise _invalid("token, device_id and a user nkey (U...) are required")
        try:
            cert = self.ca.sign_device(req.device_id, req.csr_pem.encode())
            jwt = self.trust.device_jwt(req.device_id, req.nats_user_key)
        except AuthError as exc:
            raise _invalid(str(exc)) from None
        await self.enrollments.spend(req.token, req.device_id)
        await self.credentials.issued(req.device_id, req.nats_user_key)
        if self.revoked is not None:
            self.revoked.discard(req.device_id)
        return hub_pb2.EnrollResponse(
            device_id=req.device_id,
            nats_jwt=jwt,
            nats_urls=self.nats_urls,
            client_cert_pem=cert.decode(),
            ca_pem=self.ca.pem.decode(),
            inbox_prefix=inbox_prefix(req.device_id),
            device_api=self.device_api,
            nats_ca_pem=(self.nats_ca or self.ca.pem).decode(),
        )

    async def revoke(self, device_id: str, by: str, reason: str) -> hub_pb2.RevokeDeviceResponse:
        """Revoke the device's credentials; load the revocations into the embedded NATS if there is one."""
        if not device_id:
            raise _invalid("device_id is required")
        record = await self.credentials.revoke(device_id, by, reason)
        if self.revoked is not None:
            self.revoked.add(device_id)
        revocations = await self.credentials.revocations()
        applied = False
        if self.apply_revocations is not None:
            try:
                applied = await self.apply_revocations(revocations)
            except SyncError as exc:  # recorded: the next hub start loads it; say so
                raise Refused(ErrorCode.UNAVAILABLE, f"revoked, but NATS did not reload: {exc}") from None
        log.warning("device %s revoked by %s: %s", device_id, by, reason)
        return hub_pb2.RevokeDeviceResponse(
            device_id=device_id,
            user_keys=sorted(record.user_keys),
            revoked_at=record.revoked_at,
            applied=applied,
            account_jwt=self.trust.account_jwt("account", revocations),
        )
