"""The PII vault: masked tokens and their originals, encrypted at rest with the device's key.

The key is 32 random bytes in ``<data_dir>/vault.key`` (mode 0600), created on first use and never
leaving the device. A token is ``<KIND_xxxxxxxxxx>``: ten letters of an HMAC-SHA256 of the original
under that key, so the same value always masks to the same token (the hub can still tell two mentions
apart from one) and nobody without the key can test a guess. Originals are sealed with AES-256-GCM
(the token as associated data) and stored in the edge store's ``pii_vault`` table.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import EdgeError

KEY_BYTES = 32
TOKEN_LETTERS = 10


class VaultError(EdgeError):
    """The vault key is missing, unreadable or does not open a sealed value."""


class VaultKey:
    """Derives tokens and seals/opens originals with the device's vault key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise VaultError(f"vault key must be {KEY_BYTES} bytes, got {len(key)}")
        self._key = key
        self._aead = AESGCM(key)

    @classmethod
    def load(cls, path: Path) -> VaultKey:
        """The key at ``path`` (``VaultError`` when it cannot be read); creates nothing."""
        try:
            return cls(path.read_bytes())
        except OSError as exc:
            raise VaultError(f"vault key {path}: cannot read ({exc.strerror or exc})") from None

    @classmethod
    def load_or_create(cls, path: Path) -> VaultKey:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return cls(path.read_bytes())
        try:
            os.write(fd, os.urandom(KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        return cls(path.read_bytes())

    def token(self, kind: str, original: str) -> str:
        digest = hmac.new(self._key, f"{kind}\0{original}".encode(), hashlib.sha256).digest()
        letters = "".join(chr(ord("a") + b % 26) for b in digest[:TOKEN_LETTERS])
        return f"<{kind}_{letters}>"

    def seal(self, token: str, original: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, original.encode(), token.encode())

    def open(self, token: str, sealed: bytes) -> str:
        try:
            return self._aead.decrypt(sealed[:12], sealed[12:], token.encode()).decode()
        except Exception as exc:
            raise VaultError(f"cannot open {token}: wrong vault key or damaged entry") from exc
