"""Identity logic without a server: NATS JWTs and keys, device permissions, the hub's trust folder,
certificates, API roles, and the edge's stored identity."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import nkeys
import pytest
from cryptography import x509

from edgehub.edge.uplink.identity import DeviceIdentity, EnrollmentError
from edgehub.hub.api import access
from edgehub.hub.api.access import required_roles
from edgehub.hub.operators import ANONYMOUS, Principal
from edgehub.protocol.v1 import hub_pb2
from edgehub.sync.auth import (
    AuthError,
    Trust,
    decode_jwt,
    device_permissions,
    is_user_key,
    keypair,
    new_seed,
    public_key,
)
from edgehub.sync.tls import CertificateAuthority, csr, new_key

Role = hub_pb2.Role


def test_a_jwt_carries_its_claims_and_the_issuers_signature(tmp_path: Path) -> None:
    trust = Trust.load_or_create(tmp_path)
    user = public_key(keypair(new_seed(nkeys.PREFIX_BYTE_USER)))
    token = trust.device_jwt("dev-1", user)
    claims = decode_jwt(token)
    assert claims["sub"] == user
    assert claims["iss"] == trust.account_id
    assert claims["nats"]["type"] == "user"
    assert claims["exp"] > claims["iat"]
    header, body, signature = token.split(".")
    assert json.loads(base64.urlsafe_b64decode(header + "==")) == {"typ": "JWT", "alg": "ed25519-nkey"}
    raw_signature = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    assert trust.account.verify(f"{header}.{body}".encode(), raw_signature)
    other = Trust.load_or_create(tmp_path / "other")
    with pytest.raises(nkeys.ErrInvalidSignature):
        other.account.verify(f"{header}.{body}".encode(), raw_signature)


def test_only_well_formed_user_keys_get_credentials(tmp_path: Path) -> None:
    trust = Trust.load_or_create(tmp_path)
    user = public_key(keypair(new_seed(nkeys.PREFIX_BYTE_USER)))
    assert is_user_key(user)
    assert not is_user_key(trust.account_id)  # an account key is not a user key
    assert not is_user_key(user[:-1] + ("A" if user[-1] != "A" else "B"))  # checksum broken
    assert not is_user_key("U" + "*" * 55)
    with pytest.raises(AuthError, match="not a user public nkey"):
        trust.device_jwt("dev-1", trust.account_id)


def test_device_permissions_name_only_that_devices_subjects() -> None:
    perms = device_permissions("dev.1")  # a dot must not become a subject separator
    everything = perms.publish + perms.subscribe
    assert "$KV.edgehub-devices.dev.1" in perms.publish  # its own twin: an exact KV key (dots are fine there)
    assert all("dev.1" not in s for s in everything if not s.startswith("$KV."))
    assert "edgehub.ev.dev%2E1.*" in perms.publish
    assert perms.subscribe == ("_INBOX_dev%2E1.>", "edgehub.trigger.dev%2E1.>")
    wide = ("$JS.ACK.", "_INBOX_", "edgehub.trigger.dev%2E1.")
    assert not [s for s in everything if s.endswith(".>") and not s.startswith(wide)]
    assert all(">" not in s.split(".")[:-1] and "*" not in s.split(".")[:-1] for s in everything)


def test_the_trust_folder_is_made_once_kept_private_and_broken_files_are_named(tmp_path: Path) -> None:
    first = Trust.load_or_create(tmp_path / "t")
    again = Trust.load_or_create(tmp_path / "t")
    assert first.account_id == again.account_id
    assert (tmp_path / "t" / "account.nk").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "t").stat().st_mode & 0o777 == 0o700
    config = first.server_config()
    assert "resolver: MEMORY" in config
    assert first.account_id in config
    (tmp_path / "t" / "account.nk").write_text("garbage")
    with pytest.raises(AuthError, match=r"account\.nk"):
        Trust.load_or_create(tmp_path / "t")
    (tmp_path / "t" / "VERSION").write_text("9\n")
    with pytest.raises(AuthError, match="trust format '9'"):
        Trust.load_or_create(tmp_path / "t")


def test_device_certificates_only_for_the_name_in_the_request(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path)
    key = new_key()
    cert = x509.load_pem_x509_certificate(ca.sign_device("dev-1", csr("dev-1", key)))
    assert cert.subject.rfc4514_string().endswith("CN=dev-1") or "CN=dev-1" in cert.subject.rfc4514_string()
    assert cert.issuer == ca.cert.subject
    with pytest.raises(AuthError, match="names 'dev-1', not 'dev-2'"):
        ca.sign_device("dev-2", csr("dev-1", key))
    with pytest.raises(AuthError, match="not a PEM certificate request"):
        ca.sign_device(
            "dev-1", b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
        )
    server = x509.load_pem_x509_certificate(ca.server_pair(["localhost", "127.0.0.1"])[0])
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(n.value) for n in names] == ["localhost", "127.0.0.1"]
    assert CertificateAuthority.load_or_create(tmp_path).pem == ca.pem  # reloaded, not replaced


def test_roles_are_ordered_and_devices_reach_only_device_methods() -> None:
    viewer, operator, admin = (
        Principal("operator:x", r) for r in (Role.ROLE_VIEWER, Role.ROLE_OPERATOR, Role.ROLE_ADMIN)
    )
    device = Principal("device:d", Role.ROLE_DEVICE)
    assert device.device_id == "d"
    assert viewer.device_id is None
    assert [p.may(Role.ROLE_OPERATOR) for p in (ANONYMOUS, device, viewer, operator, admin)] == [
        False, False, False, True, True
    ]  # fmt: skip
    assert [p.may(Role.ROLE_DEVICE) for p in (ANONYMOUS, device, viewer, operator, admin)] == [
        False, True, True, True, True
    ]  # fmt: skip
    assert all(p.may(Role.ROLE_PUBLIC) for p in (ANONYMOUS, device, viewer))
    assert not admin.may(Role.ROLE_UNSPECIFIED)  # a method without a declared role is closed


def test_every_api_method_declares_its_role() -> None:
    roles = required_roles()
    assert len(roles) == len(hub_pb2.DESCRIPTOR.services_by_name["HubService"].methods)
    assert Role.ROLE_UNSPECIFIED not in roles.values()
    assert roles["/edgehub.v1.HubService/Enroll"] == Role.ROLE_PUBLIC
    assert roles["/edgehub.v1.HubService/StartAgent"] == Role.ROLE_OPERATOR
    assert roles["/edgehub.v1.HubService/CreateApiToken"] == Role.ROLE_ADMIN


def test_a_stored_identity_belongs_to_one_device_and_a_broken_one_says_so(tmp_path: Path) -> None:
    assert DeviceIdentity.load(tmp_path, "dev-1") is None
    record = {
        "version": 1,
        "device_id": "dev-1",
        "nats_urls": ["nats://h:4222"],
        "inbox_prefix": "_INBOX_dev-1",
    }
    (tmp_path / "identity.json").write_text(json.dumps(record))
    found = DeviceIdentity.load(tmp_path, "dev-1")
    assert found is not None
    assert found.nats_urls == ("nats://h:4222",)
    with pytest.raises(EnrollmentError, match="belongs to device 'dev-1', but this daemon is 'dev-2'"):
        DeviceIdentity.load(tmp_path, "dev-2")
    (tmp_path / "identity.json").write_text(json.dumps({**record, "version": 7}))
    with pytest.raises(EnrollmentError, match="format 7 is not supported"):
        DeviceIdentity.load(tmp_path, "dev-1")
    (tmp_path / "identity.json").write_text("{not json")
    with pytest.raises(EnrollmentError, match="unreadable"):
        DeviceIdentity.load(tmp_path, "dev-1")


def test_revocations_ride_in_the_account_jwt_and_the_operator_jwt_never_changes(tmp_path: Path) -> None:
    trust = Trust.load_or_create(tmp_path / "trust")
    plain = decode_jwt(trust.account_jwt("account"))
    assert "revocations" not in plain["nats"]
    user = public_key(keypair(new_seed(nkeys.PREFIX_BYTE_USER)))
    claims = decode_jwt(trust.account_jwt("account", {user: 1_800_000_000}))
    assert claims["nats"]["revocations"] == {user: 1_800_000_000}
    # a nats-server refuses a configuration reload that changes its trusted operator
    assert trust.operator_jwt() == trust.operator_jwt()
    config = trust.server_config({user: 1_800_000_000})
    assert trust.operator_jwt() in config
    assert trust.server_config().split("resolver:")[0] == config.split("resolver:")[0]


def test_a_certificate_counts_as_issued_when_it_was_signed_not_when_it_became_valid(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    before = time.time()
    pem = ca.sign_device("dev-1", csr("dev-1", new_key()))
    issued = access._issued_at(pem)
    assert before - 2 <= issued <= time.time() + 2  # back-dating for clock drift is allowed for
    assert access._issued_at(b"not a certificate") == 0.0  # unreadable: covered by any revocation
