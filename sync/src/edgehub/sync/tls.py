"""X.509 for the hub's gRPC API: a private CA, the API's server certificate and device client
certificates issued from a device's own certificate request (its private key never leaves it).

Keys are ECDSA P-256; ``cryptography`` (already used for the PII vault) does the work.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .auth import AuthError, write_secret

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
        names: list[str] | None = None,
    ) -> bytes:  # fmt: skip
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - BACKDATE)
            .not_valid_after(_now() + dt.timedelta(days=LEAF_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if names:
            builder = builder.add_extension(_san(names), critical=False)
        return builder.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    def server_pair(self, names: list[str]) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) for the API, valid for ``names`` (host names and IPs)."""
        key = new_key()
        cert = self._issue(_name(names[0]), key.public_key(), ExtendedKeyUsageOID.SERVER_AUTH, names)
        return cert, key_pem(key)

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
