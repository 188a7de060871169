"""X.509 for the hub: a private CA, server certificates for the gRPC API and for NATS (the hub's
embedded nats-server, site leaf nodes), device client certificates issued from a device's own
certificate request (its private key never leaves it), and the rule every NATS client here follows.

Keys are ECDSA P-256; ``cryptography`` (already used for the PII vault) does the work.

NATS over TLS (``nats_tls``): a ``tls://`` URL is dialled with the TLS handshake *first*
(nats-server's ``handshake_first``), verifying the server's certificate against a CA the client
was given (the hub's, from enrollment), so nothing — not even the server's INFO — crosses the wire in
clear and a man in the middle cannot strip TLS by answering an INFO without ``tls_required``. A
``nats://`` URL is plaintext and allowed only to a loopback address unless the configuration says
otherwise (``allow_plaintext``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .auth import AuthError, write_secret
from .errors import SyncError

CA_DAYS = 3650
LEAF_DAYS = 365


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise AuthError("expected an EC private key")
    return key


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgehub"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])  # fmt: skip


BACKDATE = dt.timedelta(minutes=5)
"""Certificates are valid from this long before they are issued (clocks of devices drift)."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for n in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            entries.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(entries)


def csr(device_id: str, key: ec.EllipticCurvePrivateKey) -> bytes:
    """A certificate request for ``device_id`` (the CN), signed by the device's key."""
    request = (
        x509.CertificateSigningRequestBuilder().subject_name(_name(device_id)).sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM)


def common_name(cert_or_csr: x509.Certificate | x509.CertificateSigningRequest) -> str:
    values = cert_or_csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else ""


@dataclass
class CertificateAuthority:
    """The API's CA (``ca.pem``/``ca.key`` in the trust folder) and its server certificate."""

    folder: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def load_or_create(cls, folder: Path) -> CertificateAuthority:
        folder = Path(folder)
        cert_path, key_path = folder / "ca.pem", folder / "ca.key"
        if cert_path.exists() and key_path.exists():
            try:
                return cls(folder, x509.load_pem_x509_certificate(cert_path.read_bytes()),
                           _load_key(key_path.read_bytes()))  # fmt: skip
            except ValueError as exc:
                raise AuthError(f"{folder}: broken CA files: {exc}") from None
        key = new_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name("edgehub CA"))
            .issuer_name(_name("edgehub CA"))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - BACKDATE)
            .not_valid_after(_now() + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(key, hashes.SHA256())
        )
        write_secret(key_path, key_pem(key))
        write_secret(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        return cls(folder, cert, key)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def _issue(
        self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey, usage: x509.ObjectIdentifier,
        names: list[str] | None = None, days: float = LEAF_DAYS,
    ) -> bytes:  # fmt: skip
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - BACKDATE)
            .not_valid_after(_now() + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if names:
            builder = builder.add_extension(_san(names), critical=False)
        return builder.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    def server_pair(self, names: list[str], days: float = LEAF_DAYS) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) for a server (the API, NATS), valid for ``names`` (host names
        and IPs) for ``days``."""
        key = new_key()
        cert = self._issue(_name(names[0]), key.public_key(), ExtendedKeyUsageOID.SERVER_AUTH, names, days)
        return cert, key_pem(key)

    def write_server_pair(self, folder: Path, names: list[str], days: float) -> ServerTls:
        """A fresh server certificate for ``names`` in ``folder`` (``server.pem``, ``server.key``
        0600, each replaced atomically: a server reloading reads the old pair or the new one)."""
        cert, key = self.server_pair(names, days)
        pair = ServerTls(Path(folder) / "server.pem", Path(folder) / "server.key")
        write_secret(pair.key_file, key)  # the key first: a new certificate never meets an old key
        write_secret(pair.cert_file, cert)
        return pair

    def sign_device(self, device_id: str, csr_pem: bytes) -> bytes:
        """A client certificate for ``device_id`` from its request (CN must be the device id)."""
        try:
            request = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise AuthError(f"not a PEM certificate request: {exc}") from None
        if not request.is_signature_valid:
            raise AuthError("the certificate request's signature is invalid")
        if common_name(request) != device_id:
            raise AuthError(f"the certificate request names {common_name(request)!r}, not {device_id!r}")
        public = request.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise AuthError("device keys must be EC (P-256)")
        return self._issue(_name(device_id), public, ExtendedKeyUsageOID.CLIENT_AUTH)


@dataclass(frozen=True)
class ServerTls:
    """A server's certificate and key files (what nats-server's ``tls`` block names)."""

    cert_file: Path
    key_file: Path

    def _cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_file.read_bytes())

    def remaining(self, at: dt.datetime | None = None) -> dt.timedelta:
        """How long the certificate on disk is still valid (negative: expired), now or ``at``."""
        return self._cert().not_valid_after_utc - (at or _now())

    def lifetime(self) -> dt.timedelta:
        """From its issue (not the backdated start) to its end."""
        cert = self._cert()
        return cert.not_valid_after_utc - (cert.not_valid_before_utc + BACKDATE)

    def issued_by(self, ca: CertificateAuthority) -> bool:
        try:
            self._cert().verify_directly_issued_by(ca.cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True

    def due(self, fraction: float = 1 / 3, at: dt.datetime | None = None) -> bool:
        """Time to renew: less than ``fraction`` of its lifetime is left (now or ``at``)."""
        return self.remaining(at) < self.lifetime() * fraction

    def serial(self) -> int:
        return self._cert().serial_number


def names_of(cert_file: Path) -> list[str]:
    """The host names and IPs a certificate is for (its subject alternative names, in order)."""
    cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(getattr(entry, "value", entry)) for entry in san]


LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """``host`` is this machine only (127.0.0.0/8, ::1, localhost): plaintext there crosses no wire."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class PlaintextRefused(SyncError):
    """A plaintext NATS URL to another machine, and the configuration does not allow it."""


def client_context(ca: Path | bytes) -> ssl.SSLContext:
    """A TLS client context that trusts ``ca`` (a PEM file or bytes; a bundle during a CA change)
    only, and checks the server's name."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the name; no system CAs
    context.load_verify_locations(cadata=ca.decode() if isinstance(ca, bytes) else Path(ca).read_text())
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def nats_tls(
    urls: Sequence[str], ca: Path | bytes | None, *, allow_plaintext: bool = False, setting: str = ""
) -> dict[str, Any]:
    """Keyword arguments for ``nats.connect(urls, ...)`` that make it follow the rule in the module
    docstring: ``tls://`` URLs with the TLS handshake first against ``ca``; ``nats://`` URLs only on
    loopback, or anywhere with ``allow_plaintext``. ``setting`` names the configuration key in
    errors. Raises ``PlaintextRefused`` (or ``SyncError``: TLS without a CA, a mixed list)."""
    schemes = {urlsplit(u).scheme or "nats" for u in urls}
    where = f" ({setting})" if setting else ""
    if schemes - {"nats", "tls"}:
        raise SyncError(f"NATS URLs must be nats:// or tls://{where}: {', '.join(urls)}")
    if schemes == {"nats", "tls"}:
        raise SyncError(f"NATS URLs mix tls:// and nats://{where}: use one kind: {', '.join(urls)}")
    if "tls" in schemes:
        if ca is None:
            raise SyncError(f"tls:// NATS URLs need a CA to verify the server{where}")
        return {"tls": client_context(ca), "tls_handshake_first": True}
    remote = [u for u in urls if not is_loopback(urlsplit(u).hostname or "")]
    if remote and not allow_plaintext:
        raise PlaintextRefused(
            f"plaintext NATS to {', '.join(remote)} refused{where}: use tls:// (the hub's CA from "
            "enrollment), or allow_plaintext = true on a network you trust"
        )
    return {}
