"""Device identity, the hub's end (the edge's is ``edgehub.edge.uplink.identity``): one-time enrollment
tokens, what enrollment issues (NATS credentials for the key the device sent, a client certificate for
its CSR), and revocation.

Enrollment tokens are random (``ehe_``) and stored only as SHA-256 in JetStream KV
(``edgehub-enrollments``), so every hub process sees the same ones and a leaked bucket reveals none; a
token is spent with compare-and-delete, so two devices racing with one token cannot both enroll. What
each device was issued, whether it is revoked and the labels the hub assigned it (what operator scopes
select by, ``scopes.py``) is one record per device (``edgehub-credentials``) changed by compare-and-set.
A token carries the labels the device gets and the scope of the admin who made it: it is refused if
the device is outside that scope by the time it is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from nats.js import JetStreamContext

from edgehub.protocol.errors import ErrorCode
from edgehub.protocol.ids import id_of_key
from edgehub.protocol.v1 import hub_pb2, records_pb2
from edgehub.sync.auth import AuthError, Trust, inbox_prefix, is_user_key
from edgehub.sync.errors import SyncError
from edgehub.sync.records import JsonObject, ProtoCodec, RecordConflict, RecordStore, Stored, json_legacy
from edgehub.sync.streams import CREDENTIALS, ENROLLMENTS
from edgehub.sync.tls import CertificateAuthority

from ..errors import EnrollmentRefused, OutOfScope, Refused
from .scopes import FLEET, Scope, check_labels, describe_labels

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

    async def create(
        self,
        device_id: str,
        ttl_s: float,
        created_by: str,
        labels: Mapping[str, str] | None = None,
        scope: Scope = FLEET,
    ) -> tuple[str, float]:
        """A new token for ``device_id`` (which gets ``labels`` when it enrolls; ``scope``: its
        creator's) and when it expires."""
        token = f"ehe_{secrets.token_urlsafe(32)}"
        expires = time.time() + ttl_s
        record = R.EnrollmentRecord(
            device_id=device_id,
            expires_at=expires,
            created_by=created_by,
            labels=dict(labels or {}),
            created_scope=scope.to_proto(),
        )
        await self.store.put(digest(token), record)
        return token, expires

    async def spend(
        self, token: str, device_id: str, labels_now: Mapping[str, str] | None = None
    ) -> records_pb2.EnrollmentRecord:
        """Consume ``token`` for ``device_id`` exactly once and return it; EnrollmentRefused says why
        not. ``labels_now`` (the device's hub-assigned labels, None for a device never labelled nor
        enrolled) must be in the scope of the token's creator, else it is refused and not spent."""
        found = await self.store.get(digest(token))
        if found is None:
            raise EnrollmentRefused("unknown or already used enrollment token")
        if found.value.device_id != device_id:
            raise EnrollmentRefused(f"this token is for device {found.value.device_id!r}, not {device_id!r}")
        creator = Scope.from_proto(found.value.created_scope)
        if labels_now is not None and not creator.covers(device_id, labels_now):
            why = f"device {device_id} is now outside the scope of the admin who made this token"
            raise OutOfScope(why, device_id, str(creator))
        try:
            await self.store.delete(digest(token), revision=found.revision)
        except RecordConflict:  # another request spent it first
            raise EnrollmentRefused("enrollment token already used") from None
        if found.value.expires_at < time.time():
            raise EnrollmentRefused("enrollment token expired")
        return found.value


class Credentials:
    """What enrollment issued to each device (its NATS user keys), whether it is revoked and the labels
    the hub assigned it (see the module docstring). ``revoked_at`` is cached for ``CACHE_S``; ``labels``
    is read each time (scope checks of one device)."""

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

    async def issued(
        self, device_id: str, user_key: str, labels: Mapping[str, str] | None = None, by: str = ""
    ) -> records_pb2.DeviceCredentials:
        """Enrollment gave ``device_id`` the NATS user ``user_key`` and the labels its token carried
        (``by``: who made the token; None: its labels stay as they are, as for a leaf's credentials)."""
        now = time.time()

        def add(record: records_pb2.DeviceCredentials) -> None:
            record.user_keys[user_key] = now
            if labels is not None:
                _relabel(record, labels, by, now)

        return await self._update(device_id, add)

    async def relabel(
        self, device_id: str, labels: Mapping[str, str], by: str
    ) -> records_pb2.DeviceCredentials:
        """The device's hub-assigned labels are ``labels`` from now on."""
        now = time.time()
        return await self._update(device_id, lambda record: _relabel(record, labels, by, now))

    async def labels(self, device_id: str) -> dict[str, str]:
        """The labels the hub assigned to the device, read now (none: never labelled nor enrolled)."""
        found = await self.store.get(device_id)
        return dict(found.value.labels) if found is not None else {}

    async def known(self, device_id: str) -> records_pb2.DeviceCredentials | None:
        """The device's record (None: never labelled nor enrolled)."""
        found = await self.store.get(device_id)
        return found.value if found is not None else None

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


def _relabel(record: records_pb2.DeviceCredentials, labels: Mapping[str, str], by: str, now: float) -> None:
    record.labels.clear()
    record.labels.update(labels)
    record.labels_by, record.labels_at = by, now


class RevokedIds:
    """``device_id in revoked``: the revoked devices of a ``CredentialsView`` (what the device views
    take: ``DeviceWatcher(revoked=...)``)."""

    def __init__(self, view: CredentialsView) -> None:
        self.view = view

    def __contains__(self, device_id: object) -> bool:
        return device_id in self.view.revoked_ids


class CredentialsView:
    """The credentials bucket as the device views and list filters read it, without I/O: the ids of the
    revoked devices (``is_revoked``; ``revoked``, a container) and each device's hub-assigned labels
    (``labels_of``). Loaded every ``refresh_s`` (a change on another hub process shows within it) and
    changed at once by what this process does (``revoke``, ``enrolled``, ``relabelled``)."""

    def __init__(self, credentials: Credentials, refresh_s: float = CACHE_S) -> None:
        self.credentials = credentials
        self.refresh_s = refresh_s
        self.revoked_ids: frozenset[str] = frozenset()
        self.labels: dict[str, dict[str, str]] = {}
        self.revoked = RevokedIds(self)

    def labels_of(self, device_id: str) -> Mapping[str, str]:
        """The labels the hub assigned to the device (empty: none)."""
        return self.labels.get(device_id, {})

    def revoke(self, device_id: str) -> None:
        self.revoked_ids = self.revoked_ids | {device_id}

    def enrolled(self, device_id: str, labels: Mapping[str, str]) -> None:
        """Enrolled again: its new credentials are valid; it has ``labels``."""
        self.revoked_ids = self.revoked_ids - {device_id}
        self.relabelled(device_id, labels)

    def relabelled(self, device_id: str, labels: Mapping[str, str]) -> None:
        self.labels = {**self.labels, device_id: dict(labels)}

    async def refresh(self) -> None:
        records = await self.credentials.store.list()
        self.revoked_ids = frozenset(id_of_key(s.key) for s in records if is_revoked(s.value))
        self.labels = {id_of_key(s.key): dict(s.value.labels) for s in records if s.value.labels}

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
    view: CredentialsView | None = None
    """The revoked devices and labels the device views and list filters read; told at once of a
    change here."""
    nats_ca: bytes | None = None
    """The CA (bundle) of the NATS servers' certificates, handed to devices (None: ``ca``'s)."""
    device_api: str = ""
    """Where devices call the API with their client certificate (set by ``api.serve``)."""
    apply_revocations: Callable[[dict[str, int]], Awaitable[bool]] | None = None
    """Loads revocations into the hub's embedded nats-server (True: done); None: NATS is external."""
    hub_key: hub_pb2.HubKey = field(default_factory=hub_pb2.HubKey)
    """The public key the hub signs approval decisions with (``edgehub.sync.decisions``), given to each
    device at enrollment."""

    async def enrollment_token(
        self,
        device_id: str,
        ttl_s: int,
        by: str,
        labels: Mapping[str, str] | None = None,
        scope: Scope = FLEET,
    ) -> hub_pb2.EnrollmentToken:
        """A one-time token with which ``device_id`` enrolls and gets ``labels`` (none given: the labels
        it has now). A caller with a ``scope`` may make one only for a device that is new or in it, with
        labels that keep it there (``OutOfScope``)."""
        if not device_id or ttl_s > MAX_ENROLL_TTL_S:
            raise _invalid("device_id, and ttl_s at most 30 days")
        given = check_labels(labels or {})
        known = await self.credentials.known(device_id)
        now = dict(known.labels) if known is not None else {}
        if known is not None and not scope.covers(device_id, now):
            why = f"CreateEnrollmentToken: device {device_id} is outside your scope ({scope})"
            raise OutOfScope(why, device_id, str(scope))
        after = given or now
        if not scope.covers(device_id, after):
            shown = describe_labels(after) or "no labels"
            why = f"device {device_id} with {shown} would be outside your scope ({scope})"
            raise OutOfScope(
                f"CreateEnrollmentToken: {why}; give it labels in it (--label)", device_id, str(scope)
            )
        token, expires = await self.enrollments.create(
            device_id, ttl_s or DEFAULT_ENROLL_TTL_S, by, after, scope
        )
        return hub_pb2.EnrollmentToken(
            token=token, device_id=device_id, expires_at=expires, ca_pem=self.ca.pem.decode(), labels=after
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
        known = await self.credentials.known(req.device_id)
        token = await self.enrollments.spend(
            req.token, req.device_id, dict(known.labels) if known is not None else None
        )
        await self.credentials.issued(req.device_id, req.nats_user_key, token.labels, token.created_by)
        if self.view is not None:
            self.view.enrolled(req.device_id, token.labels)
        return hub_pb2.EnrollResponse(
            device_id=req.device_id,
            nats_jwt=jwt,
            nats_urls=self.nats_urls,
            client_cert_pem=cert.decode(),
            ca_pem=self.ca.pem.decode(),
            inbox_prefix=inbox_prefix(req.device_id),
            device_api=self.device_api,
            nats_ca_pem=(self.nats_ca or self.ca.pem).decode(),
            hub_key=self.hub_key,
        )

    async def revoke(self, device_id: str, by: str, reason: str) -> hub_pb2.RevokeDeviceResponse:
        """Revoke the device's credentials; load the revocations into the embedded NATS if there is one."""
        if not device_id:
            raise _invalid("device_id is required")
        record = await self.credentials.revoke(device_id, by, reason)
        if self.view is not None:
            self.view.revoke(device_id)
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

    async def relabel(self, device_id: str, labels: Mapping[str, str], by: str) -> hub_pb2.DeviceLabels:
        """Replace the device's hub-assigned labels (checked: ``check_labels``)."""
        if not device_id:
            raise _invalid("device_id is required")
        record = await self.credentials.relabel(device_id, check_labels(labels), by)
        if self.view is not None:
            self.view.relabelled(device_id, record.labels)
        log.warning("device %s labelled %s by %s", device_id, describe_labels(record.labels) or "(none)", by)
        return labels_of(device_id, record)


def labels_of(device_id: str, record: records_pb2.DeviceCredentials | None) -> hub_pb2.DeviceLabels:
    """A device's hub-assigned labels as the API returns them."""
    if record is None:
        return hub_pb2.DeviceLabels(device_id=device_id)
    return hub_pb2.DeviceLabels(
        device_id=device_id, labels=record.labels, set_by=record.labels_by, set_at=record.labels_at
    )
