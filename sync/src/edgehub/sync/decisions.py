"""Approval decisions the hub signs and devices verify (issue 17): a device resolves a held tool call
only on a decision the hub signed, carrying the approver the hub authenticated.

NATS permissions keep a device from publishing commands, but whoever else can publish on a device's
command subject (a site's leaf node holds an unrestricted user of the application account; so would a
stolen hub credential or an external NATS's operator) could otherwise approve any held call on any
device, in any name. The hub's signing key is an Ed25519 key of its own, in its trust folder
(``signing.key``, PKCS#8 PEM, 0600, made on first start), apart from the NATS keys; its public half
reaches a device at enrollment (``EnrollResponse.hub_key``), or, for a device enrolled before, over the
mutual-TLS device API (``GetHubKey``), authenticated by the CA the device got at enrollment.

The hub signs the serialized ``ApprovalDecision`` (the bytes travel as they were signed: nothing is
re-encoded before the check). ``verify`` accepts it only when the signature is the hub key's, the
decision is for this device, it is the command's own (its id is the command's, its approval key and
epoch the ones the device fences the command by), it was issued no later than ``CLOCK_SKEW_S`` ahead
of the device's clock and has not expired. One use is the store's to enforce: a decision's id resolves
at most one approval, once, so a replay of the command (under its own id) changes nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf.message import DecodeError

from edgehub.protocol.ids import InvalidId, check_device_id, check_id, shown
from edgehub.protocol.v1 import commands_pb2

from .auth import AuthError, write_secret
from .errors import MessageRejected

DECISION_VERSION = 1
"""``ApprovalDecision.schema_version`` this release signs and reads."""
CLOCK_SKEW_S = 300.0
"""How far ahead of a device's clock a decision may have been issued (the hub's clock runs ahead)."""
MAX_TTL_S = 14 * 24 * 3600.0
"""The longest a decision may stay valid: the commands stream keeps a command 14 days."""
KEY_FILE = "signing.key"


class DecisionRefused(MessageRejected):
    """A signed decision a device does not apply (the reason goes to its dead letters)."""


def key_id(public_key: bytes) -> str:
    """The name of a hub key: the first 16 hex digits of the SHA-256 of its raw public key."""
    return hashlib.sha256(public_key).hexdigest()[:16]


class SigningKey:
    """The hub's private key for the decisions it signs (``<trust>/signing.key``)."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public_key = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_id = key_id(self.public_key)

    @classmethod
    def load_or_create(cls, folder: Path) -> SigningKey:
        """The key in ``folder``, made there (0600) on first use; ``AuthError`` when it is unreadable."""
        path = Path(folder) / KEY_FILE
        if not path.exists():
            pem = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            write_secret(path, pem)
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise AuthError(f"{path}: not a PEM private key ({exc})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise AuthError(f"{path}: not an Ed25519 key")
        return cls(key)

    def signature(self, data: bytes) -> bytes:
        """This key's signature over ``data`` (every message the hub signs: decisions, policy bundles)."""
        return self._key.sign(data)

    def sign(self, decision: commands_pb2.ApprovalDecision) -> commands_pb2.DecideApproval:
        """The command body carrying ``decision`` signed (``key`` set to its key; the fields older
        daemons read are the caller's to fill)."""
        decision.schema_version = DECISION_VERSION
        data = decision.SerializeToString()
        return commands_pb2.DecideApproval(
            key=decision.key, decision=data, signature=self.signature(data), key_id=self.key_id
        )


@dataclass(frozen=True)
class HubKey:
    """A device's copy of the hub's public signing key."""

    public_key: bytes
    """Raw, 32 bytes."""

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    @classmethod
    def from_raw(cls, raw: bytes) -> HubKey:
        """``AuthError`` unless ``raw`` is an Ed25519 public key."""
        try:
            Ed25519PublicKey.from_public_bytes(raw)
        except ValueError as exc:
            raise AuthError(f"not an Ed25519 public key: {exc}") from None
        return cls(bytes(raw))

    @classmethod
    def from_pem(cls, pem: bytes) -> HubKey:
        try:
            key = serialization.load_pem_public_key(pem)
        except ValueError as exc:
            raise AuthError(f"not a PEM public key ({exc})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise AuthError("not an Ed25519 public key")
        return cls(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))

    def to_pem(self) -> bytes:
        key = Ed25519PublicKey.from_public_bytes(self.public_key)
        return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def verify(self, cmd: commands_pb2.Command, device_id: str, now: float) -> commands_pb2.ApprovalDecision:
        """The decision ``cmd`` carries, when this key signed it for ``device_id``, for the command's
        own approval key and epoch, and it is fresh at ``now``; else ``DecisionRefused`` saying why."""
        body = cmd.decide_approval
        if why := self.refusal(body.decision, body.signature, body.key_id):
            raise DecisionRefused(f"an approval decision {why}")
        return _checked(_decoded(body.decision), cmd, device_id, now)

    def refusal(self, data: bytes, signature: bytes, signer: str) -> str:
        """Why ``signature`` (by the key named ``signer``) over ``data`` is not this key's ('' when it
        is): the one check of everything the hub signs."""
        if not signature:
            return "without the hub's signature"
        if signer != self.key_id:
            return f"signed by key {shown(signer)}; this device knows {self.key_id}"
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, data)
        except InvalidSignature:
            return "whose signature is not the hub's"
        return ""


def _decoded(data: bytes) -> commands_pb2.ApprovalDecision:
    try:
        decision = commands_pb2.ApprovalDecision.FromString(data)
    except DecodeError:
        raise DecisionRefused("a signed approval decision that is not an ApprovalDecision") from None
    if decision.schema_version != DECISION_VERSION:
        raise DecisionRefused(f"approval decision schema version {decision.schema_version}")
    try:
        check_id(decision.decision_id, "decision_id")
        check_device_id(decision.device_id)
        check_id(decision.key.rpartition("/")[0], "key")
    except InvalidId as exc:
        raise DecisionRefused(exc.message) from None
    return decision


def _checked(
    d: commands_pb2.ApprovalDecision, cmd: commands_pb2.Command, device_id: str, now: float
) -> commands_pb2.ApprovalDecision:
    if d.device_id != device_id:
        raise DecisionRefused(f"an approval decision for device {d.device_id}, not {device_id}")
    if (d.decision_id, d.key, d.epoch) != (cmd.command_id, cmd.decide_approval.key, cmd.epoch):
        raise DecisionRefused(f"the command's id, approval or epoch is not the signed decision's ({d.key})")
    if d.issued_at > now + CLOCK_SKEW_S:
        raise DecisionRefused(f"approval decision {d.decision_id} issued {d.issued_at - now:.0f} s ahead")
    if not d.issued_at < d.expires_at <= d.issued_at + MAX_TTL_S or now >= d.expires_at:
        raise DecisionRefused(f"approval decision {d.decision_id} expired (or has no valid lifetime)")
    return d
