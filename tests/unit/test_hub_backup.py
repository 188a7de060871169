"""``edgehub.hub.backup.check``: what a restore verifies before it touches anything. The folder is
made here the way ``backup`` writes one (its streams' bytes stand in for nats-server's snapshots: the
check reads them as opaque files); the real snapshot and restore run in
tests/integration/test_ansible_hub.py."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edgehub.hub.backup import AAD, FORMAT, SCRYPT, BackupError, _key, _trust_blob, check, read_passphrase

PASS = b"a passphrase long enough"


def make_backup(folder: Path, trust: Path) -> Path:
    (folder / "streams").mkdir(parents=True)
    (folder / "streams/KV_x.snap").write_bytes(os.urandom(5000))
    (folder / "streams/KV_x.json").write_text(
        json.dumps({"config": {"name": "KV_x"}, "state": {"messages": 3}})
    )
    salt, nonce = os.urandom(16), os.urandom(12)
    (folder / "trust.enc").write_bytes(AESGCM(_key(PASS, salt)).encrypt(nonce, _trust_blob(trust), AAD))
    files = {
        rel: {
            "bytes": (folder / rel).stat().st_size,
            "sha256": hashlib.sha256((folder / rel).read_bytes()).hexdigest(),
        }
        for rel in ("streams/KV_x.snap", "streams/KV_x.json", "trust.enc")
    }
    manifest = {
        "format": FORMAT,
        "version": 1,
        "streams": [
            {"name": "KV_x", "data": "streams/KV_x.snap", "meta": "streams/KV_x.json", "messages": 3}
        ],
        "trust": {
            "file": "trust.enc",
            **SCRYPT,
            "salt": base64.b64encode(salt).decode(),
            "nonce": base64.b64encode(nonce).decode(),
        },
        "files": files,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture
def backup(tmp_path: Path) -> Path:
    trust = tmp_path / "trust"
    trust.mkdir()
    (trust / "account.nk").write_text("SA-not-a-real-seed")
    (trust / "ca.pem").write_text("-----BEGIN CERTIFICATE-----")
    return make_backup(tmp_path / "bk", trust)


def test_an_intact_backup_passes_and_yields_the_trust_folder(backup: Path) -> None:
    checked = check(backup, PASS)
    assert checked.trust_files == {
        "account.nk": b"SA-not-a-real-seed",
        "ca.pem": b"-----BEGIN CERTIFICATE-----",
    }
    assert b"SA-not-a-real-seed" not in (backup / "trust.enc").read_bytes()


def test_a_wrong_passphrase_is_refused(backup: Path) -> None:
    with pytest.raises(BackupError, match="wrong passphrase, or altered"):
        check(backup, b"another passphrase entirely")


def test_a_changed_byte_is_refused(backup: Path) -> None:
    snap = backup / "streams/KV_x.snap"
    data = bytearray(snap.read_bytes())
    data[100] ^= 1
    snap.write_bytes(bytes(data))
    with pytest.raises(BackupError, match=r"KV_x.snap does not match its sha256"):
        check(backup, PASS)


def test_a_missing_file_or_manifest_is_an_incomplete_backup(backup: Path) -> None:
    (backup / "streams/KV_x.json").unlink()
    with pytest.raises(BackupError, match=r"streams/KV_x.json is missing \(incomplete backup\)"):
        check(backup, PASS)
    (backup / "manifest.json").unlink()
    with pytest.raises(BackupError, match=r"no manifest\.json"):
        check(backup, PASS)


def test_another_format_version_and_escaping_names_are_refused(backup: Path) -> None:
    path = backup / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "version": 2}))
    with pytest.raises(BackupError, match="format version 2; this edgehub reads 1"):
        check(backup, PASS)
    manifest["files"]["../etc/passwd"] = {"bytes": 1, "sha256": "0"}
    path.write_text(json.dumps(manifest))
    with pytest.raises(BackupError, match="refuses the file name"):
        check(backup, PASS)


def test_the_passphrase_comes_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EDGEHUB_BACKUP_PASSPHRASE", raising=False)
    with pytest.raises(BackupError, match="at least 12 characters"):
        read_passphrase(None)
    monkeypatch.setenv("EDGEHUB_BACKUP_PASSPHRASE", "from the environment")
    assert read_passphrase(None) == b"from the environment"
    f = tmp_path / "pass"
    f.write_text("from a file, first line\nignored\n")
    assert read_passphrase(f) == b"from a file, first line"
    with pytest.raises(BackupError, match="passphrase file"):
        read_passphrase(tmp_path / "absent")
