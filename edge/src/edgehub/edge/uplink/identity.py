"""This device's identity: enrollment with a one-time token, and the credentials it yields.

``enroll`` makes the device's keys here (a NATS user nkey and an EC key for its client certificate),
sends only the public halves with the token to the hub's API (verified against the hub's CA), and
keeps what comes back in ``<data_dir>/identity/`` (0700, secrets 0600)::

    device.creds     NATS user JWT + seed (only this device's subjects)
    device.key/.pem  client certificate for the hub's API (mutual TLS)
    ca.pem           the hub's CA
    nats-ca.pem      the CA of the NATS servers' certificates (tls:// URLs): the hub's, or its
                     external cluster's
    hub.pub          the hub's public signing key (approval decisions: ``edgehub.sync.decisions``)
    identity.json    version, device id, NATS URLs, inbox prefix, enrolment time

A device enrolled before the hub signed decisions has no ``hub.pub``: it fetches it once from the
hub's device API (``GetHubKey``, mutual TLS against the CA it got at enrollment) and keeps it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import nkeys

from edgehub.protocol.v1 import hub_pb2, hub_pb2_grpc
from edgehub.sync.auth import AuthError, creds_text, keypair, new_seed, public_key, write_secret
from edgehub.sync.decisions import HubKey
from edgehub.sync.tls import csr, key_pem, new_key

from ..errors import EdgeError

IDENTITY_VERSION = 1


class EnrollmentError(EdgeError):
    pass


@dataclass(frozen=True)
class DeviceIdentity:
    folder: Path
    device_id: str
    nats_urls: tuple[str, ...]
    inbox_prefix: str
    device_api: str = ""
    """The hub's API for devices (mutual TLS with ``device.pem``/``device.key``)."""

    @property
    def creds(self) -> Path:
        return self.folder / "device.creds"

    @property
    def nats_ca(self) -> Path:
        """The CA that verifies the NATS servers (a device enrolled before it was handed out: the
        hub's CA, which signs the embedded server's certificate)."""
        handed = self.folder / "nats-ca.pem"
        return handed if handed.exists() else self.folder / "ca.pem"

    @property
    def hub_key_path(self) -> Path:
        return self.folder / "hub.pub"

    def hub_key(self) -> HubKey | None:
        """The hub's signing key this device keeps (None: enrolled before the hub had one)."""
        if not self.hub_key_path.exists():
            return None
        try:
            return HubKey.from_pem(self.hub_key_path.read_bytes())
        except AuthError as exc:
            why = f"{self.hub_key_path}: {exc.message}; delete it to fetch it again"
            raise EnrollmentError(why) from None

    def keep_hub_key(self, raw: bytes) -> HubKey:
        """Keep the hub's signing key (``AuthError``: ``raw`` is not one)."""
        key = HubKey.from_raw(raw)
        write_secret(self.hub_key_path, key.to_pem())
        return key

    @classmethod
    def load(cls, folder: Path, device_id: str) -> DeviceIdentity | None:
        """The enrolled identity in ``folder``, None if the device never enrolled."""
        path = folder / "identity.json"
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
            version, owner = int(data["version"]), str(data["device_id"])
            found = cls(
                folder,
                owner,
                tuple(data.get("nats_urls", [])),
                str(data["inbox_prefix"]),
                str(data.get("device_api", "")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise EnrollmentError(f"{path}: unreadable ({exc}); enroll again") from None
        if version != IDENTITY_VERSION:
            raise EnrollmentError(f"{path}: identity format {version} is not supported")
        if owner != device_id:
            raise EnrollmentError(f"{path} belongs to device {owner!r}, but this daemon is {device_id!r}")
        return found


def enroll(folder: Path, device_id: str, api: str, token: str, ca_pem: bytes) -> DeviceIdentity:
    """Trade ``token`` for this device's credentials at the hub's API ``api``."""
    seed = new_seed(nkeys.PREFIX_BYTE_USER)
    cert_key = new_key()
    request = hub_pb2.EnrollRequest(
        token=token,
        device_id=device_id,
        nats_user_key=public_key(keypair(seed)),
        csr_pem=csr(device_id, cert_key).decode(),
    )
    try:
        with grpc.secure_channel(api, grpc.ssl_channel_credentials(ca_pem)) as channel:
            reply = hub_pb2_grpc.HubServiceStub(channel).Enroll(request, timeout=30)
    except grpc.RpcError as exc:
        raise EnrollmentError(f"the hub refused: {exc.code().name.lower()}: {exc.details()}") from None
    write_secret(folder / "device.creds", creds_text(reply.nats_jwt, seed))
    write_secret(folder / "device.key", key_pem(cert_key))
    write_secret(folder / "device.pem", reply.client_cert_pem)
    write_secret(folder / "ca.pem", reply.ca_pem)
    write_secret(folder / "nats-ca.pem", reply.nats_ca_pem or reply.ca_pem)
    record = {
        "version": IDENTITY_VERSION,
        "device_id": device_id,
        "nats_urls": list(reply.nats_urls),
        "inbox_prefix": reply.inbox_prefix,
        "device_api": reply.device_api,
        "enrolled_at": time.time(),
        "api": api,
    }
    write_secret(folder / "identity.json", json.dumps(record, indent=2) + "\n")
    identity = DeviceIdentity.load(folder, device_id)
    assert identity is not None
    if reply.hub_key.public_key:  # a hub of the release before has none: fetched later (GetHubKey)
        try:
            identity.keep_hub_key(reply.hub_key.public_key)
        except AuthError as exc:
            raise EnrollmentError(f"the hub's signing key is unusable: {exc.message}") from None
    elif identity.hub_key_path.exists():
        identity.hub_key_path.unlink()  # an earlier enrollment's: this hub may be another
    return identity
