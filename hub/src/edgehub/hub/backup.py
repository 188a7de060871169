"""Backup and restore of a hub (``edgehub hub backup`` / ``edgehub hub restore``, docs/rollout.md).

A backup is a folder:

- ``streams/NAME.snap`` and ``streams/NAME.json``: every JetStream stream of the hub's account (the
  events, commands and dead-letter streams, and the streams behind every KV and object bucket: devices,
  tokens, goals, applied-event records, ...) as nats-server's own snapshot (``$JS.API.STREAM.SNAPSHOT``,
  consumers included), and the stream's configuration and state the snapshot reply carried, which the
  restore request (``$JS.API.STREAM.RESTORE``) needs. nats-py has no call for either, so the request
  and its chunked, flow-controlled reply are spoken here, as natscli's ``nats stream backup`` does.
- ``trust.enc``: the hub's trust folder (NATS operator and account keys, the API's CA and its key, the
  approval signing key, the admin token) encrypted with AES-256-GCM under a key derived from a
  passphrase with scrypt (``cryptography``, already a dependency of edgehub-sync).
- ``manifest.json`` (versioned, written last: a folder without one is an incomplete backup): every
  file with its size and sha256, the streams with their message counts, the KDF parameters.

The knowledge graph's Neo4j is not in the backup: an operator's Neo4j (``[neo4j] uri``) is backed up
where it runs (``neo4j-admin database dump``); the embedded launcher's database cannot be dumped while
the hub runs (Neo4j Community has no online dump) and the launcher ships no ``neo4j-admin``. The
manifest says so.

A restore checks the whole backup (sizes, sha256s, the passphrase against the GCM tag) before it
touches anything, then writes the trust folder and restores the streams into the hub's JetStream store
through a nats-server of its own on a free loopback port: the hub must be stopped.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import nats
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from nats.aio.client import Client, RawCredentials
from nats.errors import Error as NatsError

from edgehub.sync.auth import Trust, write_secret
from edgehub.sync.models import file_sha256
from edgehub.sync.server import NatsServer, dial_host
from edgehub.sync.tls import nats_tls

from .config import HubConfig
from .errors import HubError

FORMAT = "edgehub-hub-backup"
VERSION = 1
"""The manifest's format version; a restore refuses any other (a later format appends a reader)."""
MANIFEST = "manifest.json"
TRUST_FILE = "trust.enc"
CHUNK = 128 * 1024
AAD = b"edgehub-hub-backup-trust-v1"
SCRYPT = {"n": 2**15, "r": 8, "p": 1}
PASSPHRASE_ENV = "EDGEHUB_BACKUP_PASSPHRASE"
REQUEST_TIMEOUT_S = 30.0
NEO4J_NOTE = (
    "not included: back up an operator's Neo4j where it runs (neo4j-admin database dump); the embedded "
    "launcher's database cannot be dumped while the hub runs (Neo4j Community has no online dump)"
)

Progress = Callable[[str], None]


class BackupError(HubError):
    """A backup that cannot be taken, or a backup folder that cannot be restored (one line: why)."""


@dataclass(frozen=True)
class Summary:
    folder: Path
    streams: int
    messages: int
    bytes: int
    seconds: float


def read_passphrase(path: Path | None) -> bytes:
    """From ``path`` (its first line) or ``$EDGEHUB_BACKUP_PASSPHRASE``; BackupError when neither."""
    if path is not None:
        try:
            text = path.read_text().splitlines()[0] if path.read_text() else ""
        except OSError as exc:
            raise BackupError(f"passphrase file {path}: {exc.strerror or exc}") from None
    else:
        text = os.environ.get(PASSPHRASE_ENV, "")
    if len(text.strip()) < 12:
        raise BackupError(
            f"a passphrase of at least 12 characters is needed (--passphrase-file, or ${PASSPHRASE_ENV})"
        )
    return text.strip().encode()


def _key(passphrase: bytes, salt: bytes) -> bytes:
    return Scrypt(salt=salt, length=32, **SCRYPT).derive(passphrase)


def _trust_blob(folder: Path) -> bytes:
    """The trust folder's files as JSON (relative path -> base64 content)."""
    files = {
        p.relative_to(folder).as_posix(): base64.b64encode(p.read_bytes()).decode()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }
    return json.dumps({"version": 1, "files": files}).encode()


def _api_error(reply: dict[str, Any], what: str) -> None:
    if err := reply.get("error"):
        raise BackupError(f"{what}: {err.get('description', err)} (code {err.get('err_code', '?')})")


async def _request(nc: Client, subject: str, payload: bytes, wait_s: float = REQUEST_TIMEOUT_S) -> Any:
    msg = await nc.request(subject, payload, timeout=wait_s)
    return json.loads(msg.data or b"{}")


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


async def stream_names(nc: Client) -> list[str]:
    names: list[str] = []
    while True:
        reply = await _request(nc, "$JS.API.STREAM.NAMES", _json({"offset": len(names)}))
        _api_error(reply, "listing the streams")
        page = reply.get("streams") or []
        names += page
        if not page or len(names) >= int(reply.get("total", 0)):
            return sorted(names)


async def snapshot_stream(nc: Client, name: str, out: Path, progress: Progress) -> dict[str, Any]:
    """``$JS.API.STREAM.SNAPSHOT.<name>`` into ``out``: the server sends chunks to an inbox, each with a
    reply subject it wants an (empty) acknowledgement on (its flow control), then an empty message (with
    a status header if it gave up). Returns the reply's config and state."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        reply = await _request(
            nc,
            f"$JS.API.STREAM.SNAPSHOT.{name}",
            _json({"deliver_subject": inbox, "chunk_size": CHUNK, "jsck": True}),
        )
        _api_error(reply, f"snapshot of {name}")
        size, next_report = 0, 8 << 20
        with out.open("wb") as f:
            while True:
                msg = await sub.next_msg(timeout=REQUEST_TIMEOUT_S)
                if not msg.data:
                    status = (msg.headers or {}).get("Status")
                    if status:
                        why = (msg.headers or {}).get("Description", "")
                        raise BackupError(f"snapshot of {name} stopped by the server: {status} {why}".strip())
                    break
                f.write(msg.data)
                size += len(msg.data)
                if msg.reply:
                    await nc.publish(msg.reply, b"")
                if size >= next_report:
                    progress(f"  {name}: {size / 1e6:.0f} MB ...")
                    next_report += 8 << 20
            f.flush()
            os.fsync(f.fileno())
    except TimeoutError:
        raise BackupError(
            f"snapshot of {name}: no data from the server for {REQUEST_TIMEOUT_S:.0f} s"
        ) from None
    finally:
        await sub.unsubscribe()
    return {"config": reply["config"], "state": reply["state"]}


async def restore_stream(nc: Client, meta: dict[str, Any], data: Path, progress: Progress) -> dict[str, Any]:
    """``$JS.API.STREAM.RESTORE.<name>``: the reply names a subject to send the snapshot to in chunks,
    each acknowledged, then an empty message, whose reply is the restored stream's info."""
    name = meta["config"]["name"]
    reply = await _request(
        nc, f"$JS.API.STREAM.RESTORE.{name}", _json({"config": meta["config"], "state": meta["state"]})
    )
    _api_error(reply, f"restore of {name}")
    deliver = reply["deliver_subject"]
    sent, next_report = 0, 8 << 20
    with data.open("rb") as f:
        while chunk := f.read(CHUNK):
            ack = await nc.request(deliver, chunk, timeout=REQUEST_TIMEOUT_S)
            if ack.data:
                _api_error(json.loads(ack.data), f"restore of {name}")
            sent += len(chunk)
            if sent >= next_report:
                progress(f"  {name}: {sent / 1e6:.0f} MB ...")
                next_report += 8 << 20
    done = await _request(nc, deliver, b"", wait_s=300)
    _api_error(done, f"restore of {name}")
    return done


async def _connect(url: str, creds: str, ca: Path, allow_plaintext: bool) -> Client:
    try:
        return await nats.connect(
            url,
            user_credentials=RawCredentials(creds),
            connect_timeout=5,
            max_reconnect_attempts=0,
            allow_reconnect=False,
            **nats_tls([url], ca, allow_plaintext=allow_plaintext),
        )
    except (OSError, NatsError, TimeoutError) as exc:
        raise BackupError(f"cannot reach the hub's NATS at {url}: {exc or exc.__class__.__name__}") from None


def _trust(cfg: HubConfig) -> Trust:
    if not (cfg.auth.dir / "account.nk").exists():
        raise BackupError(f"no trust folder at {cfg.auth.dir}: run this where the hub runs ([auth] dir)")
    return Trust.load_or_create(cfg.auth.dir)


async def _snapshot_all(
    url: str, creds: str, ca: Path, allow_plaintext: bool, work: Path, progress: Progress
) -> list[dict[str, Any]]:
    nc = await _connect(url, creds, ca, allow_plaintext)
    streams = []
    try:
        names = await stream_names(nc)
        progress(f"backing up {len(names)} streams from {url}")
        for i, name in enumerate(names, 1):
            data = work / "streams" / f"{name}.snap"
            meta = await snapshot_stream(nc, name, data, progress)
            count = int(meta["state"].get("messages", 0))
            streams.append({"name": name, "meta_json": meta, "messages": count})
            progress(f"[{i}/{len(names)}] {name}: {count} messages")
    finally:
        await nc.close()
    return streams


def backup(cfg: HubConfig, url: str, to: Path, passphrase: bytes, progress: Progress) -> Summary:
    """Everything the hub keeps in JetStream and its trust folder into the new folder ``to`` (written as
    ``to.partial`` and renamed when complete)."""
    if to.exists() and any(to.iterdir()):
        raise BackupError(f"{to} exists and is not empty: back up into a new folder")
    trust = _trust(cfg)
    started = time.monotonic()
    work = to.with_name(to.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    (work / "streams").mkdir(parents=True, mode=0o700)
    ca = cfg.auth.dir / "ca.pem"
    got = asyncio.run(
        _snapshot_all(url, trust.hub_creds("backup"), ca, cfg.nats.allow_plaintext, work, progress)
    )
    streams = []
    for s in got:
        name = s["name"]
        (work / "streams" / f"{name}.json").write_text(json.dumps(s["meta_json"], indent=1))
        streams.append(
            {
                "name": name,
                "data": f"streams/{name}.snap",
                "meta": f"streams/{name}.json",
                "messages": s["messages"],
            }
        )
    salt, nonce = os.urandom(16), os.urandom(12)
    sealed = AESGCM(_key(passphrase, salt)).encrypt(nonce, _trust_blob(cfg.auth.dir), AAD)
    write_secret(work / TRUST_FILE, sealed)
    progress(f"trust folder {cfg.auth.dir}: encrypted ({len(sealed)} bytes)")
    paths = [work / s[k] for s in streams for k in ("data", "meta")] + [work / TRUST_FILE]
    files = {
        p.relative_to(work).as_posix(): {"bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in paths
    }
    trust_params: dict[str, Any] = {
        "file": TRUST_FILE,
        "cipher": "AES-256-GCM",
        "kdf": "scrypt",
        **SCRYPT,
        "salt": base64.b64encode(salt).decode(),
        "nonce": base64.b64encode(nonce).decode(),
    }
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "hub_id": cfg.hub.id,
        "streams": streams,
        "trust": trust_params,
        "neo4j": {"included": False, "note": NEO4J_NOTE},
        "files": files,
    }
    write_secret(work / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    if to.exists():
        to.rmdir()
    work.rename(to)
    size = sum(int(f["bytes"]) for f in files.values())
    messages = sum(int(s["messages"]) for s in streams)
    return Summary(to, len(streams), messages, size, time.monotonic() - started)


@dataclass(frozen=True)
class Checked:
    """A backup folder that passed every check, its trust folder decrypted."""

    folder: Path
    manifest: dict[str, Any]
    trust_files: dict[str, bytes]


def check(folder: Path, passphrase: bytes) -> Checked:
    """Every check a restore makes before it touches anything; BackupError names the first problem."""
    path = folder / MANIFEST
    if not path.is_file():
        raise BackupError(f"{folder}: no {MANIFEST} (not a backup, or an incomplete one)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{path}: not an edgehub hub backup manifest")
    if manifest.get("version") != VERSION:
        raise BackupError(
            f"{path}: backup format version {manifest.get('version')!r}; this edgehub reads {VERSION}"
        )
    try:
        files: dict[str, dict[str, Any]] = manifest["files"]
        needed = {s[k] for s in manifest["streams"] for k in ("data", "meta")} | {manifest["trust"]["file"]}
    except (KeyError, TypeError) as exc:
        raise BackupError(f"{path}: incomplete manifest (missing {exc})") from None
    if missing := sorted(needed - set(files)):
        raise BackupError(f"{path}: lists no size and sha256 for {', '.join(missing)}")
    for rel, want in files.items():
        p = PurePosixPath(rel)
        if p.is_absolute() or ".." in p.parts:
            raise BackupError(f"{path}: refuses the file name {rel!r}")
        f = folder / rel
        if not f.is_file():
            raise BackupError(f"{folder}: {rel} is missing (incomplete backup)")
        if f.stat().st_size != want.get("bytes"):
            raise BackupError(
                f"{folder}: {rel} has {f.stat().st_size} bytes, the manifest says {want.get('bytes')}"
            )
        if file_sha256(f) != want.get("sha256"):
            raise BackupError(
                f"{folder}: {rel} does not match its sha256 in the manifest (corrupted or altered)"
            )
    t = manifest["trust"]
    try:
        key = Scrypt(salt=base64.b64decode(t["salt"]), length=32, n=t["n"], r=t["r"], p=t["p"]).derive(
            passphrase
        )
        blob = AESGCM(key).decrypt(base64.b64decode(t["nonce"]), (folder / t["file"]).read_bytes(), AAD)
    except InvalidTag:
        raise BackupError(
            f"{folder}: the trust folder does not decrypt: wrong passphrase, or altered"
        ) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise BackupError(f"{path}: bad trust parameters ({exc})") from None
    trust_files = {rel: base64.b64decode(data) for rel, data in json.loads(blob)["files"].items()}
    for rel in trust_files:
        p = PurePosixPath(rel)
        if p.is_absolute() or ".." in p.parts:
            raise BackupError(f"{folder}: the trust folder holds a bad file name {rel!r}")
    for s in manifest["streams"]:
        meta = json.loads((folder / s["meta"]).read_text())
        if meta.get("config", {}).get("name") != s["name"]:
            raise BackupError(f"{folder}: {s['meta']} is not the configuration of stream {s['name']}")
    return Checked(folder, manifest, trust_files)


def _listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((dial_host(host), port), timeout=1).close()
        return True
    except OSError:
        return False


def _occupied(path: Path) -> bool:
    return path.exists() and any(path.iterdir())


async def _restore_all(
    store: Path, trust: Trust, checked: Checked, max_store: int | None, progress: Progress
) -> int:
    """Restore every stream through a nats-server of this process's own on ``store``."""
    server = await NatsServer.start(store, auth=trust.server_config(), max_store=max_store)
    streams, messages = checked.manifest["streams"], 0
    try:
        nc = await _connect(server.url, trust.hub_creds("restore"), trust.folder / "ca.pem", True)
        try:
            existing = set(await stream_names(nc))
            for i, s in enumerate(streams, 1):
                if s["name"] in existing:
                    raise BackupError(f"stream {s['name']} already exists in {store}")
                meta = json.loads((checked.folder / s["meta"]).read_text())
                info = await restore_stream(nc, meta, checked.folder / s["data"], progress)
                got = int(info.get("state", {}).get("messages", -1))
                if got != s["messages"]:
                    raise BackupError(
                        f"stream {s['name']}: {got} messages after the restore, "
                        f"the backup has {s['messages']}"
                    )
                messages += got
                progress(f"[{i}/{len(streams)}] {s['name']}: {got} messages restored")
        finally:
            await nc.close()
    finally:
        await server.stop()
    return messages


def restore(cfg: HubConfig, checked: Checked, progress: Progress, *, replace: bool = False) -> Summary:
    """Into the stopped hub's trust folder and JetStream store (both empty, or moved aside with
    ``replace``)."""
    started = time.monotonic()
    n = cfg.nats
    if n.url:
        raise BackupError(
            "[nats] url is set: restore the streams on that NATS (nats stream restore); this command "
            "restores the hub's embedded server"
        )
    if n.embedded_port and _listening(n.embedded_host, n.embedded_port):
        raise BackupError(f"something listens on the hub's NATS port {n.embedded_port}: stop the hub first")
    store, trust_dir = n.embedded_store, cfg.auth.dir
    for what in (store / "jetstream", trust_dir):
        if _occupied(what):
            if not replace:
                raise BackupError(
                    f"{what} is not empty: restore into a destroyed hub, or pass --replace (moves it aside)"
                )
            aside = what.with_name(f"{what.name}.before-restore-{time.strftime('%Y%m%dT%H%M%S')}")
            what.rename(aside)
            progress(f"moved {what} aside to {aside}")
    trust_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    trust_dir.chmod(0o700)
    for rel, data in checked.trust_files.items():
        write_secret(trust_dir / rel, data)
    progress(f"trust folder restored into {trust_dir} ({len(checked.trust_files)} files)")
    trust = Trust.load_or_create(trust_dir)
    max_store = cfg.retention.jetstream_max_store_mb
    messages = asyncio.run(
        _restore_all(store, trust, checked, max_store * 1024 * 1024 if max_store else None, progress)
    )
    size = sum(int(f["bytes"]) for f in checked.manifest["files"].values())
    return Summary(
        checked.folder, len(checked.manifest["streams"]), messages, size, time.monotonic() - started
    )
