"""The rule every NATS connection follows (``edgehub.sync.tls.nats_tls``), the hub's and the edge's
configuration of it, and the certificates' renewal bookkeeping."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from edgehub.edge.config import HubLinkConfig
from edgehub.edge.errors import ConfigError
from edgehub.edge.uplink.link import hub_endpoints
from edgehub.hub.config import NatsConfig
from edgehub.hub.fleet.leaf import _server_certificate
from edgehub.sync.errors import SyncError
from edgehub.sync.server import tls_block
from edgehub.sync.tls import (
    CertificateAuthority,
    PlaintextRefused,
    ServerTls,
    is_loopback,
    names_of,
    nats_tls,
)


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "trust")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host", ["10.0.0.1", "0.0.0.0", "hub.example.com", "192.168.1.10", "", "127.example"]
)
def test_other_hosts_are_not_loopback(host: str) -> None:
    assert not is_loopback(host)


def test_plaintext_is_refused_off_loopback_unless_allowed() -> None:
    assert nats_tls(["nats://127.0.0.1:4222", "nats://localhost:4222"], None) == {}
    with pytest.raises(
        PlaintextRefused, match=r"plaintext NATS to nats://10\.0\.0\.1:4222 refused \(hub.nats_url\)"
    ):
        nats_tls(["nats://10.0.0.1:4222"], None, setting="hub.nats_url")
    with pytest.raises(PlaintextRefused):
        nats_tls(["nats://127.0.0.1:4222", "nats://hub.example:4222"], None)
    assert nats_tls(["nats://10.0.0.1:4222"], None, allow_plaintext=True) == {}


def test_tls_urls_need_a_ca_and_dial_tls_first(ca: CertificateAuthority) -> None:
    with pytest.raises(SyncError, match="need a CA"):
        nats_tls(["tls://hub.example:4222"], None)
    options = nats_tls(["tls://hub.example:4222"], ca.pem)
    assert options["tls_handshake_first"] is True
    context = options["tls"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert len(context.get_ca_certs()) == 1, "only the given CA is trusted, not the system's"


@pytest.mark.parametrize(
    ("urls", "message"),
    [(["tls://a:1", "nats://127.0.0.1:2"], "mix"), (["ws://a:1"], "must be nats:// or tls://")],
)
def test_mixed_or_foreign_schemes_are_refused(
    urls: list[str], message: str, ca: CertificateAuthority
) -> None:
    with pytest.raises(SyncError, match=message):
        nats_tls(urls, ca.pem)


def test_hub_tls_defaults_to_on_off_loopback_and_plaintext_there_needs_permission() -> None:
    assert not NatsConfig().client_tls  # loopback: plaintext crosses no wire
    assert NatsConfig(embedded_host="0.0.0.0").client_tls
    lan = NatsConfig(embedded_host="127.0.0.1", leaf_port=7422, leaf_host="10.1.1.1")
    assert not lan.client_tls
    assert lan.leaf_tls
    with pytest.raises(ValidationError, match=r"tls = false with embedded_host = '0\.0\.0\.0'"):
        NatsConfig(embedded_host="0.0.0.0", tls=False)
    with pytest.raises(ValidationError, match="leaf_host"):
        NatsConfig(leaf_port=7422, leaf_host="10.1.1.1", tls=False)
    assert not NatsConfig(embedded_host="0.0.0.0", tls=False, allow_plaintext=True).client_tls
    with pytest.raises(ValidationError, match="plaintext NATS URL off loopback"):
        NatsConfig(url="nats://nats.example:4222")
    NatsConfig(url="tls://nats.example:4222")


def test_hub_advertises_the_scheme_its_server_takes() -> None:
    with pytest.raises(ValidationError, match="takes tls://"):
        NatsConfig(embedded_host="0.0.0.0", advertise=["nats://hub.example:4222"])
    names = NatsConfig(embedded_host="0.0.0.0", advertise=["tls://hub.example:4222"]).server_names()
    assert "hub.example" in names
    assert "0.0.0.0" not in names


def test_edge_refuses_a_plaintext_hub_off_loopback_with_the_key_named(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="refused") as refused:
        hub_endpoints(HubLinkConfig(nats_url="nats://10.0.0.5:4222"), None)
    assert refused.value.key == "hub.nats_url"
    urls, options = hub_endpoints(HubLinkConfig(nats_url="nats://10.0.0.5:4222", allow_plaintext=True), None)
    assert urls == ["nats://10.0.0.5:4222"]
    assert options == {}
    with pytest.raises(ConfigError, match="need a CA"):
        hub_endpoints(HubLinkConfig(nats_url="tls://10.0.0.5:4222"), None)
    (tmp_path / "ca.pem").write_bytes(ca.pem)
    _, options = hub_endpoints(
        HubLinkConfig(nats_url="tls://10.0.0.5:4222", ca_file=tmp_path / "ca.pem"), None
    )
    assert options["tls_handshake_first"]


def test_server_block_takes_tls_first(tmp_path: Path) -> None:
    block = tls_block(ServerTls(tmp_path / "s.pem", tmp_path / "s.key"))
    assert "handshake_first: true" in block
    assert f'cert_file: "{tmp_path / "s.pem"}"' in block
    assert tls_block(None) == ""


def test_a_certificate_is_due_when_a_third_of_its_life_is_left(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    fresh = ca.write_server_pair(tmp_path / "a", ["hub.example"], 30)
    assert not fresh.due()
    assert fresh.issued_by(ca)
    assert 29.9 < fresh.lifetime().total_seconds() / 86400 <= 30.0
    assert not fresh.due(at=datetime.now(UTC) + timedelta(days=19.9))
    assert fresh.due(at=datetime.now(UTC) + timedelta(days=20.1))
    other = CertificateAuthority.load_or_create(tmp_path / "other")
    assert not fresh.issued_by(other)
    assert (tmp_path / "a" / "server.key").stat().st_mode & 0o777 == 0o600


def test_leaf_certificate_is_kept_until_names_change_it_is_due_or_renewed(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    folder = tmp_path / "leaf"
    assert _server_certificate(ca, folder, ["10.0.0.2"], 90, renew=False)
    serial = ServerTls(folder / "server.pem", folder / "server.key").serial()
    assert names_of(folder / "server.pem") == ["10.0.0.2"]
    assert not _server_certificate(ca, folder, ["10.0.0.2"], 90, renew=False)
    assert ServerTls(folder / "server.pem", folder / "server.key").serial() == serial
    assert _server_certificate(ca, folder, ["10.0.0.2", "gw.site"], 90, renew=False)
    assert _server_certificate(ca, folder, ["10.0.0.2", "gw.site"], 90, renew=True)
    other = CertificateAuthority.load_or_create(tmp_path / "other")
    assert _server_certificate(other, folder, ["10.0.0.2", "gw.site"], 90, renew=False)  # another hub's CA
