"""What a NATS leaf node on a site gateway needs from the hub (``edgehub hub leaf-config``).

A leaf runs in operator mode with the hub's trust (the operator JWT, the system account, the two
account JWTs preloaded in a MEMORY resolver, with the hub's current revocations), so devices
authenticate *at the leaf* with their own credentials and keep their per-device permissions there. Its
remote connection to the hub's leafnode listener uses credentials of its own: an unrestricted user of
the application account named ``leaf:<name>``, recorded like a device's so that
``edgehub devices revoke leaf:<name>`` cuts the leaf off. The leaf runs no JetStream: JetStream API
requests and every subject travel over that connection to the hub's JetStream.

The folder written (``write_leaf_folder``):

    trust.conf    the operator-mode block (public: JWTs only, no seed), included by the leaf's config
    account.pub   the application account's public key (the remote's ``account``)
    leaf.creds    the leaf's user credentials (secret, 0600); kept across runs unless renewed
    ca.pem        the hub's CA: the leaf verifies the hub's leafnode listener with it (and devices,
                  which got it at enrollment, verify the leaf)
    server.pem    with TLS names: the leaf's own server certificate for the site's devices, from the
    server.key    hub's CA (the key 0600); renewed when a third of its life is left, the names change
                  or ``renew``; the leaf loads a renewed one on reload, its devices stay connected

Running it again writes nothing when nothing changed (the JWTs carry an issue time, so claims are
compared, not text), and keeps the operator JWT a leaf already has: nats-server refuses a reload that
changes it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nkeys
from nats.aio.client import RawCredentials

from edgehub.protocol.ids import holder
from edgehub.sync.auth import Trust, creds_text, decode_jwt, keypair, new_seed, public_key, write_secret
from edgehub.sync.tls import CertificateAuthority, ServerTls, names_of, nats_tls

from .identity import Credentials

_JWT = re.compile(r'"(ey[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)"')
_OPERATOR = re.compile(r'^operator: "([^"]+)"$', re.M)
_CREDS_JWT = re.compile(r"-----BEGIN NATS USER JWT-----\n(\S+)\n")


def leaf_user(name: str) -> str:
    """The record (``edgehub devices revoke`` argument) the leaf's credentials are issued under."""
    return holder("leaf", name)


@dataclass(frozen=True)
class LeafFolder:
    """What ``write_leaf_folder`` did."""

    folder: Path
    account: str
    """The application account's public key."""
    trust_changed: bool
    """trust.conf was written (new, or the claims changed: e.g. a device was revoked since)."""
    creds_issued: str | None
    """The user key of newly issued leaf credentials; None: the existing ones were kept."""
    cert_issued: bool = False
    """A new server certificate was written (none yet, names changed, due, or renewed)."""


def _claims(jwt: str) -> dict[str, Any]:
    return {k: v for k, v in decode_jwt(jwt).items() if k not in ("iat", "jti")}


def _normalised(text: str) -> str:
    """The block with each JWT replaced by its claims without issue time and id."""
    return _JWT.sub(lambda m: repr(sorted(_claims(m.group(1)).items())), text)


def trust_block(trust: Trust, revocations: dict[str, int], previous: str = "") -> str:
    """``Trust.server_config`` for a leaf, keeping ``previous``'s operator JWT when it is the same
    operator (a reloading nats-server refuses a different operator JWT, even an equivalent one)."""
    block = trust.server_config(revocations)
    old, new = _OPERATOR.search(previous), _OPERATOR.search(block)
    if old and new and _claims(old.group(1)) == _claims(new.group(1)):
        block = block.replace(new.group(1), old.group(1))
    return block


def leaf_creds(trust: Trust, name: str) -> tuple[str, str]:
    """Fresh credentials for a leaf's remote connection: (creds file text, user public key)."""
    seed = new_seed(nkeys.PREFIX_BYTE_USER)
    user_key = public_key(keypair(seed))
    return creds_text(trust.user_jwt(leaf_user(name), user_key, None), seed), user_key


def _creds_account(text: str) -> str | None:
    found = _CREDS_JWT.search(text)
    return str(decode_jwt(found.group(1)).get("iss")) if found else None


@asynccontextmanager
async def _hub_credentials(
    trust: Trust, nats_url: str, tls: dict[str, Any] | None, process: str
) -> AsyncIterator[Credentials]:
    """The hub's credential records, over a short connection to its NATS as the hub process
    ``process``; ``tls``: the connection's TLS arguments (``nats_tls``)."""
    nc = await nats.connect(
        nats_url,
        **(tls or {}),
        name=f"edgehub-{process}",
        user_credentials=RawCredentials(trust.hub_creds(process)),
        allow_reconnect=False,
        connect_timeout=5,
    )
    try:
        yield Credentials(nc.jetstream())
    finally:
        await nc.close()


async def hub_revocations(
    trust: Trust, nats_url: str, issued: tuple[str, str] | None = None, *, tls: dict[str, Any] | None = None
) -> dict[str, int]:
    """The hub's current revocations; ``issued`` (record, user key): first record newly issued leaf
    credentials, as enrollment does for a device's."""
    async with _hub_credentials(trust, nats_url, tls, "leaf-config") as credentials:
        if issued is not None:
            await credentials.issued(*issued)
        return await credentials.revocations()


async def record_issued(
    trust: Trust, nats_url: str, who: str, user_key: str, *, tls: dict[str, Any] | None = None
) -> None:
    """Record credentials issued to ``who`` (a ``holder`` id) so that revoking ``who`` cuts them off."""
    async with _hub_credentials(trust, nats_url, tls, "nats-creds") as credentials:
        await credentials.issued(who, user_key)


def _server_certificate(
    ca: CertificateAuthority, folder: Path, names: list[str], days: float, renew: bool
) -> bool:
    """Write the leaf's server certificate unless the one there is for ``names``, from ``ca`` and not
    due; True: written."""
    pair = ServerTls(folder / "server.pem", folder / "server.key")
    if not renew and pair.cert_file.exists() and pair.key_file.exists():
        try:
            if names_of(pair.cert_file) == names and pair.issued_by(ca) and not pair.due():
                return False
        except ValueError:  # unreadable: issue a new one
            pass
    ca.write_server_pair(folder, names, days)
    return True


def write_leaf_folder(
    trust: Trust,
    nats_url: str,
    folder: Path,
    name: str,
    *,
    renew: bool = False,
    ca: CertificateAuthority | None = None,
    tls_names: list[str] | None = None,
    tls_days: float = 90.0,
    allow_plaintext: bool = False,
) -> LeafFolder:
    """Write (or bring up to date) ``folder`` for the leaf ``name``; needs the hub's NATS running.
    ``ca``: the hub's CA (written as ca.pem; with ``tls_names``, the leaf's server certificate for
    those names is issued from it, valid ``tls_days``)."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    trust_file, creds_file, account_file = (
        folder / "trust.conf",
        folder / "leaf.creds",
        folder / "account.pub",
    )
    old_creds = creds_file.read_text() if creds_file.exists() else ""
    creds, user_key = None, None
    if renew or _creds_account(old_creds) != trust.account_id:  # none yet, or another hub's
        creds, user_key = leaf_creds(trust, name)
    issued = (leaf_user(name), user_key) if user_key else None
    tls = nats_tls([nats_url], ca.pem if ca else None, allow_plaintext=allow_plaintext)
    revocations = asyncio.run(hub_revocations(trust, nats_url, issued, tls=tls))
    if creds is not None:
        write_secret(creds_file, creds)
    previous = trust_file.read_text() if trust_file.exists() else ""
    block = trust_block(trust, revocations, previous)
    changed = _normalised(block) != _normalised(previous)
    if changed:
        trust_file.write_text(block)
        trust_file.chmod(0o644)
    if not account_file.exists() or account_file.read_text().strip() != trust.account_id:
        account_file.write_text(trust.account_id + "\n")
    cert_issued = False
    if ca is not None:
        ca_file = folder / "ca.pem"
        if not ca_file.exists() or ca_file.read_bytes() != ca.pem:
            ca_file.write_bytes(ca.pem)
            ca_file.chmod(0o644)
        if tls_names:
            cert_issued = _server_certificate(ca, folder, tls_names, tls_days, renew)
    return LeafFolder(folder, trust.account_id, changed, user_key, cert_issued)
