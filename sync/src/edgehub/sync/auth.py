"""NATS identity: decentralized auth (operator -> account -> user JWTs signed with nkeys).

The hub holds three nkeys (its *trust*): an operator, the ``EDGEHUB`` application account (JetStream
on) and a system account. The NATS server trusts the operator and preloads both account JWTs
(``resolver: MEMORY``); any hub process holding the account seed can mint a user JWT for a device
without touching the server (no reload, no shared user list), which keeps hub processes stateless.

A device's user JWT allows exactly its own subjects (``device_permissions``): publish its events,
its twin and its dead letters, consume its own command consumer, read (never write) the hub's models
object store, receive replies on its own inbox prefix and the events of its own ``nats`` triggers
(``edgehub.trigger.<device>.>``, which hub users may publish to). The server enforces them; the hub
additionally checks that an event's payload names the device its subject names. The device generates
its user key itself: the seed never leaves it.

JWT encoding follows the NATS JWT v2 format (header ``{"typ":"JWT","alg":"ed25519-nkey"}``, claims
with ``jti`` = base32 SHA-256 of the claims, signature = the issuer's ed25519 signature over
``header.claims``), which the server verifies; the ``nkeys`` package (from nats-io) does the keys.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import nkeys

from edgehub.protocol import subjects
from edgehub.protocol.ids import kv_key

from .commands import consumer_name
from .errors import SyncError
from .streams import DEVICES, MODELS

TRUST_VERSION = 1
_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
APP_ACCOUNT = "EDGEHUB"
SYS_ACCOUNT = "SYS"
DEVICE_JWT_TTL_S = 365 * 24 * 3600


class AuthError(SyncError):
    """Bad key, bad credentials file or broken trust folder."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_seed(kind: int) -> bytes:
    """A fresh nkey seed of ``kind`` (``nkeys.PREFIX_BYTE_USER`` ...)."""
    return bytes(nkeys.encode_seed(os.urandom(32), kind))


def keypair(seed: bytes | str) -> nkeys.KeyPair:
    raw = seed.encode() if isinstance(seed, str) else seed
    try:
        return nkeys.from_seed(bytearray(raw.strip()))
    except Exception as exc:
        raise AuthError(f"not an nkey seed: {exc.__class__.__name__}") from None


def public_key(kp: nkeys.KeyPair) -> str:
    return bytes(kp.public_key).decode()


def is_user_key(value: str) -> bool:
    """A well-formed user public nkey (``U`` + 55 base32 characters with a valid checksum)."""
    if not re.fullmatch(r"U[A-Z2-7]{55}", value):
        return False
    try:
        raw = base64.b32decode(value + "=" * (-len(value) % 8))
    except ValueError:
        return False
    return raw[0] == nkeys.PREFIX_BYTE_USER and bytes(nkeys.crc16_checksum(raw[:-2])) == raw[-2:]


def encode_jwt(claims: dict[str, Any], issuer: nkeys.KeyPair) -> str:
    """Sign ``claims`` (``iss``, ``iat`` and ``jti`` are filled in) with ``issuer``."""
    body = {**claims, "iss": public_key(issuer), "iat": int(time.time()), "jti": ""}
    body["jti"] = base64.b32encode(hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest())
    body["jti"] = body["jti"].decode().rstrip("=")
    signing_input = f"{_b64(json.dumps(_HEADER).encode())}.{_b64(json.dumps(body).encode())}"
    return f"{signing_input}.{_b64(bytes(issuer.sign(signing_input.encode())))}"


def decode_jwt(token: str) -> dict[str, Any]:
    """The claims of a JWT (no signature check: the server does that)."""
    try:
        payload = token.split(".")[1]
        claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError) as exc:
        raise AuthError(f"not a JWT: {exc}") from None
    return claims


_UNLIMITED = {"subs": -1, "data": -1, "payload": -1}
_ACCOUNT_LIMITS = {**_UNLIMITED, "imports": -1, "exports": -1, "wildcards": True, "conn": -1, "leaf": -1}
_JETSTREAM = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]

    def claims(self) -> dict[str, Any]:
        return {"pub": {"allow": list(self.publish)}, "sub": {"allow": list(self.subscribe)}}


def inbox_prefix(device_id: str) -> str:
    """The reply-subject prefix a device must use (its credentials may read no other inbox)."""
    return f"_INBOX_{subjects.token(device_id)}"


def device_permissions(device_id: str) -> Permissions:
    """What one device may do on NATS, and nothing more."""
    dev = subjects.token(device_id)
    stream, cname = subjects.COMMANDS_STREAM, consumer_name(device_id)
    api = "$JS.API"
    return Permissions(
        publish=(
            f"{subjects.PREFIX}.ev.{dev}.*",
            subjects.device_deadletter(device_id),
            subjects.knowledge(device_id),
            subjects.escalation(device_id),
            f"$KV.{DEVICES.name}.{kv_key(device_id)}",
            f"{api}.STREAM.INFO.KV_{DEVICES.name}",
            f"{api}.CONSUMER.INFO.{stream}.{cname}",
            f"{api}.CONSUMER.CREATE.{stream}.{cname}.{subjects.commands(device_id)}",
            f"{api}.CONSUMER.MSG.NEXT.{stream}.{cname}",
            f"$JS.ACK.{stream}.{cname}.>",
            # the hub's models: read only (stream info, an object's metadata, its chunks by sequence);
            # nothing of theirs may publish to $O.edgehub-models.> or change the stream
            f"{api}.STREAM.INFO.OBJ_{MODELS}",
            f"{api}.STREAM.MSG.GET.OBJ_{MODELS}",
            f"{api}.DIRECT.GET.OBJ_{MODELS}",
        ),
        subscribe=(f"{inbox_prefix(device_id)}.>", subjects.device_trigger(device_id)),
    )


def creds_text(jwt: str, seed: bytes) -> str:
    """The standard NATS ``.creds`` file (what ``nats.connect(user_credentials=...)`` reads)."""
    return (
        f"-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{seed.decode()}\n------END USER NKEY SEED------\n\n"
        "*************************************************************\n"
    )


def write_secret(path: Path, text: str | bytes) -> None:
    """Write a file only its owner can read (created 0600), replaced atomically and durably: the data
    and the rename both survive power loss. The temporary file is per process, so two processes
    writing the same file never share one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = text.encode() if isinstance(text, str) else text
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


class Trust:
    """The hub's operator, application account and system account keys, kept in one folder (0700).

    ``load_or_create`` makes them on first use; every hub process of one deployment must share the
    folder's ``account.nk`` (it signs device credentials). The operator and system seeds are only
    needed to produce the server configuration (``server_config``).
    """

    FILES: ClassVar[dict[str, int]] = {
        "operator": nkeys.PREFIX_BYTE_OPERATOR,
        "account": nkeys.PREFIX_BYTE_ACCOUNT,
        "system": nkeys.PREFIX_BYTE_ACCOUNT,
    }

    def __init__(self, folder: Path, keys: dict[str, nkeys.KeyPair]) -> None:
        self.folder = folder
        self.operator = keys["operator"]
        self.account = keys["account"]
        self.system = keys["system"]
        self._operator_jwt: str | None = None

    @classmethod
    def load_or_create(cls, folder: Path) -> Trust:
        folder = Path(folder)
        version_file = folder / "VERSION"
        if version_file.exists() and version_file.read_text().strip() != str(TRUST_VERSION):
            raise AuthError(f"{folder}: trust format {version_file.read_text().strip()!r} is not supported")
        keys = {}
        for name, kind in cls.FILES.items():
            path = folder / f"{name}.nk"
            if not path.exists():
                write_secret(path, new_seed(kind))
            try:
                keys[name] = keypair(path.read_bytes())
            except AuthError as exc:
                raise AuthError(f"{path}: {exc}") from None
        if not version_file.exists():
            write_secret(version_file, f"{TRUST_VERSION}\n")
        return cls(folder, keys)

    @property
    def account_id(self) -> str:
        return public_key(self.account)

    def operator_jwt(self) -> str:
        """Issued once per Trust: a server reloading its configuration refuses any change of it."""
        if self._operator_jwt is None:
            self._operator_jwt = encode_jwt(
                {
                    "name": "edgehub",
                    "sub": public_key(self.operator),
                    "nats": {"type": "operator", "version": 2, "system_account": public_key(self.system)},
                },
                self.operator,
            )
        return self._operator_jwt

    def account_jwt(self, which: str, revocations: Mapping[str, int] | None = None) -> str:
        """The account's JWT; ``revocations`` (user public key -> unix time): JWTs of those users issued
        before that time are refused, and their connections closed when a server loads it."""
        kp, name = (self.account, APP_ACCOUNT) if which == "account" else (self.system, SYS_ACCOUNT)
        limits = {**_ACCOUNT_LIMITS, **(_JETSTREAM if which == "account" else {})}
        nats_claims: dict[str, Any] = {
            "type": "account",
            "version": 2,
            "limits": limits,
            "default_permissions": {},
        }
        if revocations:
            nats_claims["revocations"] = dict(sorted(revocations.items()))
        return encode_jwt({"name": name, "sub": public_key(kp), "nats": nats_claims}, self.operator)

    def server_config(self, revocations: Mapping[str, int] | None = None) -> str:
        """The nats-server configuration block that makes a server trust this hub's operator (and
        refuse the revoked users)."""
        app, sys_ = public_key(self.account), public_key(self.system)
        return (
            f'operator: "{self.operator_jwt()}"\n'
            f"system_account: {sys_}\n"
            "resolver: MEMORY\n"
            "resolver_preload: {\n"
            f'  {app}: "{self.account_jwt("account", revocations)}"\n'
            f'  {sys_}: "{self.account_jwt("system")}"\n'
            "}\n"
        )

    def user_jwt(
        self, name: str, user_key: str, permissions: Permissions | None, ttl_s: float | None = None
    ) -> str:
        """A user of the application account; ``permissions`` None: unrestricted (hub processes)."""
        if not is_user_key(user_key):
            raise AuthError(f"not a user public nkey: {user_key[:60]!r}")
        claims: dict[str, Any] = {"type": "user", "version": 2, **_UNLIMITED}
        if permissions is not None:
            claims.update(permissions.claims())
        body: dict[str, Any] = {"name": name, "sub": user_key, "nats": claims}
        if ttl_s:
            body["exp"] = int(time.time() + ttl_s)
        return encode_jwt(body, self.account)

    def device_jwt(self, device_id: str, user_key: str) -> str:
        return self.user_jwt(f"device:{device_id}", user_key, device_permissions(device_id), DEVICE_JWT_TTL_S)

    def hub_creds(self, name: str) -> str:
        """Fresh unrestricted credentials for a hub process (its own new user key)."""
        seed = new_seed(nkeys.PREFIX_BYTE_USER)
        return creds_text(self.user_jwt(f"hub:{name}", public_key(keypair(seed)), None), seed)
