"""``edgehub edge doctor``: what this device has of what the daemon needs, and how to fix what is missing.

Each check says whether it passed, whether the configuration makes it required (CRIU only when
``[snapshot] enabled``, bubblewrap only with ``[sandbox] mode = "bwrap"``, the hub only when one is
configured or the device is enrolled), what was found, and the fix. The CLI exits 1 when a required
check fails. The store is checked as every open checks it (SQLite's ``quick_check``, and whether it is
behind its watermark); ``--store`` checks only the store, fully (``integrity_check``), and
``--accept-rollback`` accepts what a store behind its watermark lost (recorded in the store);
``--recover-from-hub`` recovers it from what the hub holds (``edgehub.edge.recovery``). When the device
is enrolled, the store is also compared with the last outbox sequence the hub applied from it.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgehub.llm import ModelFileError, check_model_file

from ..brain import llama_settings
from ..config import EdgeConfig
from ..datadir import DaemonLock
from ..errors import EdgeError, StoreDamaged
from ..store.sqlite import SqliteStore
from ..store.sqlite.watermark import AcceptedRollback
from ..uplink.identity import DeviceIdentity
from ..uplink.link import hub_endpoints

if TYPE_CHECKING:
    from ..recovery import Recovered

BOOTSTRAP = "scripts/bootstrap.sh (runs scripts/criu.sh)"


@dataclass(frozen=True, slots=True)
class Finding:
    """The outcome of one check."""

    name: str
    """What was checked."""
    ok: bool
    required: bool
    """The configuration needs it: a failure makes ``doctor`` exit 1."""
    detail: str
    """What was found (a path, a version, an error)."""
    fix: str = ""
    """How to fix a failure; empty when ok."""


def check_criu(cfg: EdgeConfig) -> list[Finding]:
    from ..worker import SnapshotError, find_criu
    from ..worker.snapshots import criu_version, pycriu_module

    need = cfg.snapshot.enabled
    binary = find_criu(cfg.snapshot.criu)
    if binary is None:
        where = (
            f"{cfg.snapshot.criu} is not executable"
            if cfg.snapshot.criu
            else "no criu beside Python or on PATH"
        )
        return [Finding("criu binary", False, need, where, f"run {BOOTSTRAP}, or set snapshot.criu")]
    version = criu_version(binary)
    major = int(version.split(".")[0]) if version[:1].isdigit() else 0
    found = [
        Finding(
            "criu version",
            major >= 4,
            need,
            f"{binary}: {version or 'does not run'}",
            "" if major >= 4 else f"CRIU >= 4 is needed on 6.x kernels: run {BOOTSTRAP}",
        )
    ]
    try:
        pycriu_module()
        found.append(Finding("pycriu", True, need, "importable"))
    except SnapshotError as exc:
        found.append(Finding("pycriu", False, need, exc.reason, f"run {BOOTSTRAP}"))
        return found
    out = subprocess.run([binary, "check"], capture_output=True, text=True, timeout=60, check=False)
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip() and "RLIMIT_NOFILE" not in ln]
    if out.returncode == 0:
        found.append(Finding("criu check", True, need, lines[-1] if lines else "passed"))
    else:
        fix = "run as root (or with CAP_CHECKPOINT_RESTORE); CRIU >= 4 for 6.x kernels"
        found.append(
            Finding("criu check", False, need, " | ".join(lines[-2:]) or f"exit {out.returncode}", fix)
        )
    return found


def check_bwrap(cfg: EdgeConfig) -> Finding:
    path = shutil.which("bwrap")
    need = cfg.sandbox.mode == "bwrap"
    if path:
        return Finding("bubblewrap", True, need, path)
    return Finding("bubblewrap", False, need, "bwrap not on PATH", "apt-get install bubblewrap")


def check_model(cfg: EdgeConfig) -> Finding:
    try:
        path = check_model_file(llama_settings(cfg.model))
    except ModelFileError as exc:
        return Finding("model", False, True, str(exc), "set model.path to a GGUF file, or run bootstrap")
    return Finding("model", True, True, f"{path} ({path.stat().st_size / 1e6:.0f} MB)")


async def _nats_ping(
    urls: list[str], tls: dict[str, Any], identity: DeviceIdentity | None, wait_s: float
) -> None:
    import nats
    from nats.aio.client import DEFAULT_INBOX_PREFIX

    errors: list[Exception] = []

    async def collect(exc: Exception) -> None:  # instead of nats-py's traceback on stderr
        errors.append(exc)

    try:
        nc = await asyncio.wait_for(
            nats.connect(
                urls,
                connect_timeout=wait_s,
                allow_reconnect=False,
                max_reconnect_attempts=0,
                error_cb=collect,
                user_credentials=str(identity.creds) if identity else None,
                inbox_prefix=identity.inbox_prefix if identity else DEFAULT_INBOX_PREFIX,
                **tls,
            ),
            wait_s * 2,
        )
    except Exception as exc:
        raise (errors[-1] if errors else exc) from None
    try:
        await nc.flush(timeout=max(1, round(wait_s)))
    finally:
        await nc.close()


def check_hub(cfg: EdgeConfig, timeout: float = 3.0) -> Finding | None:
    """NATS reachability of the configured hub; None when this device has no hub."""
    try:
        identity = DeviceIdentity.load(cfg.identity_dir, cfg.device.id)
    except EdgeError as exc:
        return Finding("hub identity", False, True, str(exc), "edgehub edge enroll --force ...")
    try:
        urls, tls = hub_endpoints(cfg.hub, identity)
    except EdgeError as exc:
        return Finding("hub (NATS)", False, True, str(exc), "use tls:// URLs (edgehub edge enroll)")
    if not urls:
        return None
    try:
        asyncio.run(_nats_ping(urls, tls, identity, timeout))
    except Exception as exc:
        detail = f"{', '.join(urls)}: {type(exc).__name__}: {exc}".rstrip(": ")
        return Finding("hub (NATS)", False, True, detail, "check hub.nats_url, the network and credentials")
    return Finding("hub (NATS)", True, True, ", ".join(urls))


def diagnose(cfg: EdgeConfig) -> list[Finding]:
    findings = [check_model(cfg), check_bwrap(cfg), *check_criu(cfg), *check_store(cfg)]
    hub = check_hub(cfg)
    if hub is not None:
        findings.append(hub)
    return findings


MOVE_ASIDE = (
    "restore {db} from a backup, or move {db} and {db}-wal aside (keep {db}.watermark) and run"
    " `edgehub edge doctor --store --accept-rollback` to start an empty store"
)


def _hub_applied(cfg: EdgeConfig, store: SqliteStore) -> Finding | None:
    """Compare ``store`` with the last outbox sequence the hub applied from this device (when enrolled
    with a hub's device API); a finding when the hub could not be asked."""
    from ..uplink.recovery import applied_seq

    try:
        identity = DeviceIdentity.load(cfg.identity_dir, cfg.device.id)
        if identity is None or not identity.device_api:
            return None
        store.compare_hub(asyncio.run(applied_seq(identity)))
    except EdgeError as exc:
        fix = "check the hub; only the watermark was checked"
        return Finding("store vs hub", False, False, str(exc), fix)
    return None


def check_store(cfg: EdgeConfig, *, full: bool = False) -> list[Finding]:
    """The store: SQLite's check (``quick_check`` as at every open; ``full``: ``integrity_check``) and
    whether it is behind its watermark or, when enrolled, the hub's applied sequence; ``full`` also
    shows the size of its write-ahead log."""
    path = cfg.store_path
    if not path.exists():
        return [Finding("store", True, True, f"{path}: not created yet (the first run creates it)")]
    fix_damage = MOVE_ASIDE.format(db=path.name)
    try:
        store = SqliteStore.open(path, device_id=cfg.device.id)
    except StoreDamaged as exc:
        return [Finding("store integrity", False, True, f"{path}: {'; '.join(exc.problems[:3])}", fix_damage)]
    except EdgeError as exc:
        return [Finding("store", False, True, str(exc), fix_damage)]
    try:
        unasked = _hub_applied(cfg, store) if store.rollback is None else None
        problems = store.integrity() if full else []
        kind = "integrity_check" if full else "quick_check"
        found = [Finding(f"store {kind}", not problems, True, f"{path}: {'; '.join(problems[:3]) or 'ok'}",
                         fix_damage if problems else "")]  # fmt: skip
        found.append(_rollback_finding(store))
        if full:
            wal = path.with_name(path.name + "-wal")
            size = wal.stat().st_size if wal.exists() else 0
            detail = f"{size / 1e6:.1f} MB, store generation {store.generation}"
            found.append(Finding("store WAL", True, True, detail))
        return [*found, unasked] if unasked is not None else found
    finally:
        store.close()


def _rollback_finding(store: SqliteStore) -> Finding:
    lost = store.rollback
    if lost is None:
        detail = f"none: generation {store.generation}, not behind its watermark"
        return Finding("store rollback", True, True, detail)
    by = f"acknowledged up to {lost.acked_seq}"
    if lost.hub_applied:
        by = f"the hub applied up to {lost.hub_applied}"
    detail = (
        f"generation {lost.found}, watermark {lost.recorded}: commits lost (outbox {by},"
        f" the store has up to {lost.outbox_seq}); no agent runs"
    )
    fix = "edgehub edge doctor --store --recover-from-hub (or --accept-rollback)"
    return Finding("store rollback", False, True, detail, fix)


def accept_rollback(cfg: EdgeConfig, by: str) -> AcceptedRollback:
    """Accept what the store lost (``SqliteStore.accept_rollback``), after comparing it with the hub
    when enrolled (best effort: the outbox then goes on after what the hub applied); ``EdgeError`` when
    a daemon runs on it, or it lost nothing."""
    if DaemonLock.held(cfg.device.data_dir):
        raise EdgeError(f"an edge daemon is running on {cfg.device.data_dir}: stop it first")
    if not cfg.store_path.exists():
        raise EdgeError(f"no store at {cfg.store_path}: nothing to accept")
    store = SqliteStore.open(cfg.store_path, device_id=cfg.device.id)
    try:
        _hub_applied(cfg, store)
        return store.accept_rollback(by)
    finally:
        store.close()


def recover_from_hub(cfg: EdgeConfig, by: str) -> Recovered:
    """Recover the store from what the hub holds of this device (``edgehub.edge.recovery``);
    ``EdgeError`` when a daemon runs on it, the device has no hub, the hub does not answer, or the
    store lost nothing."""
    from ..recovery import next_steps, recover
    from ..uplink.recovery import holdings

    if DaemonLock.held(cfg.device.data_dir):
        raise EdgeError(f"an edge daemon is running on {cfg.device.data_dir}: stop it first")
    if not cfg.store_path.exists():
        raise EdgeError(f"no store at {cfg.store_path}: nothing to recover")
    identity = DeviceIdentity.load(cfg.identity_dir, cfg.device.id)
    if identity is None or not identity.device_api:
        raise EdgeError(
            "this device is not enrolled with a hub (`edgehub edge enroll`): nothing to recover from"
        )
    store = SqliteStore.open(cfg.store_path, device_id=cfg.device.id)
    try:
        held = asyncio.run(holdings(identity, next_steps(store)))
        return recover(store, held, by)
    finally:
        store.close()
