"""Fleet policy bundles (issue 20): the hub signs one ``PolicyBundle`` per device with its signing key
(``decisions.SigningKey``, the key that signs approval decisions) and a device checks it against the
key it got at enrollment (``decisions.HubKey``) before anything about it is believed.

``verify_bundle`` is the device's whole check of a bundle against what it runs: signed by the hub's
key, for this device, a schema version it reads, the text matching its hash, and newer than the
bundle it runs (the same version only with the same text: a bundle delivered again). Whether the
text is a policy it reads is the edge's own check (``PolicyModel``): the edge knows its policy format,
the hub does not import it.
"""

from __future__ import annotations

import hashlib

from google.protobuf.message import DecodeError

from edgehub.protocol.ids import InvalidId, check_device_id
from edgehub.protocol.v1 import policy_pb2

from .decisions import HubKey, SigningKey
from .errors import MessageRejected
from .records import ProtoCodec

P = policy_pb2
POLICY_BUNDLE_VERSION = 1
"""``PolicyBundle.schema_version`` this release signs and reads."""
POLICY_RECORD_VERSION = 1
"""``PolicyPush``/``PolicyAssignment`` ``schema_version`` the hub writes."""
MAX_POLICY_BYTES = 256 * 1024
"""The largest policy text a push carries (a command must stay under the stream's message size)."""
PUSHES = ProtoCodec(P.PolicyPush, POLICY_RECORD_VERSION)
ASSIGNMENTS = ProtoCodec(P.PolicyAssignment, POLICY_RECORD_VERSION)


class PolicyRefused(MessageRejected):
    """A bundle a device does not apply; ``version`` is the bundle's when it could be read (else 0)."""

    def __init__(self, reason: str, version: int = 0) -> None:
        super().__init__(reason)
        self.version = version


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def sign_bundle(key: SigningKey, bundle: P.PolicyBundle) -> P.SignedPolicy:
    """``bundle`` serialized and signed (its schema version and hash filled in)."""
    bundle.schema_version = POLICY_BUNDLE_VERSION
    bundle.sha256 = text_sha256(bundle.text)
    data = bundle.SerializeToString()
    return P.SignedPolicy(bundle=data, signature=key.signature(data), key_id=key.key_id)


def _decoded(data: bytes) -> P.PolicyBundle:
    try:
        bundle = P.PolicyBundle.FromString(data)
    except DecodeError:
        raise PolicyRefused("a signed policy bundle that is not a PolicyBundle") from None
    if bundle.schema_version != POLICY_BUNDLE_VERSION:
        raise PolicyRefused(f"policy bundle schema version {bundle.schema_version}", bundle.version)
    try:
        check_device_id(bundle.device_id)
    except InvalidId as exc:
        raise PolicyRefused(exc.message, bundle.version) from None
    if bundle.sha256 != text_sha256(bundle.text):
        raise PolicyRefused(
            f"policy bundle {bundle.version}: its text does not match its hash", bundle.version
        )
    return bundle


def peek_version(signed: P.SignedPolicy) -> int:
    """The version a (not yet verified) bundle claims, for reports; 0 when unreadable."""
    try:
        return int(P.PolicyBundle.FromString(signed.bundle).version)
    except DecodeError:
        return 0


def verify_bundle(
    key: HubKey, signed: P.SignedPolicy, device_id: str, running: P.PolicyBundle | None
) -> P.PolicyBundle:
    """The bundle ``signed`` carries when the hub's ``key`` signed it for ``device_id`` and it may
    replace ``running`` (the bundle in force, None: the device's own policy); else ``PolicyRefused``."""
    claimed = peek_version(signed)
    if why := key.refusal(signed.bundle, signed.signature, signed.key_id):
        raise PolicyRefused(f"a policy bundle {why}", claimed)
    bundle = _decoded(signed.bundle)
    if bundle.device_id != device_id:
        raise PolicyRefused(
            f"policy bundle {bundle.version} is for device {bundle.device_id}, not {device_id}",
            bundle.version,
        )
    if running is not None:
        if bundle.version < running.version:
            raise PolicyRefused(
                f"policy bundle {bundle.version} is older than version {running.version} in force",
                bundle.version,
            )
        if bundle.version == running.version and bundle.sha256 != running.sha256:
            raise PolicyRefused(
                f"policy bundle {bundle.version} differs from the version {running.version} in force",
                bundle.version,
            )
    return bundle
