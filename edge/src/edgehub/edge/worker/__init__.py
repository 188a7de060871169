"""The warm worker: the model in its own process, which CRIU checkpoints when idle and restores on use.

``open_worker_brain(cfg)`` is what the daemon opens instead of an in-process brain when
``[snapshot] enabled``; ``idle_checkpoints`` is the task that puts it to sleep. See docs/wake.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from edgehub.llm import ModelFileError

from ..config import EdgeConfig, SnapshotConfig
from ..errors import ModelError
from .client import WorkerBrain
from .errors import SnapshotError, SnapshotRefused, WorkerError
from .manifest import Manifest
from .snapshots import Criu, Snapshots, find_criu

__all__ = [
    "Criu",
    "Manifest",
    "SnapshotError",
    "SnapshotRefused",
    "Snapshots",
    "WorkerBrain",
    "WorkerError",
    "find_criu",
    "idle_checkpoints",
    "open_worker_brain",
    "snapshot_dir",
]

log = logging.getLogger("edgehub.edge.snapshot")


def snapshot_dir(cfg: EdgeConfig) -> Path:
    """This device's image folder: ``<data_dir>/snapshots``, or a subfolder named by the device's id in
    ``[snapshot] dir`` (a hardware profile's tmpfs, say), so daemons sharing that folder on one machine
    never restore, overwrite or prune each other's images."""
    if cfg.snapshot.dir is None:
        return cfg.device.data_dir / "snapshots"
    return cfg.snapshot.dir / cfg.device.id


def open_snapshots(folder: Path, criu_override: Path | None) -> Snapshots | None:
    """The snapshot folder with a usable CRIU, or None (logged: the worker then only starts cold)."""
    binary = find_criu(criu_override)
    if binary is None:
        log.warning("snapshots are on but no criu binary was found; workers will start cold")
        return None
    try:
        return Snapshots(folder, Criu(binary))
    except SnapshotError as exc:
        log.warning("snapshots are on but unusable (%s); workers will start cold", exc)
        return None


def open_worker_brain(cfg: EdgeConfig) -> WorkerBrain:
    """The daemon's brain when ``[snapshot] enabled``: restored from the last image when it fits."""
    from ..brain import llama_settings

    folder = snapshot_dir(cfg)
    try:
        return WorkerBrain.open(
            llama_settings(cfg.model), folder=folder, snapshots=open_snapshots(folder, cfg.snapshot.criu)
        )
    except ModelFileError as exc:
        raise ModelError(exc.reason, path=exc.path) from None


async def _checkpoint_loop(brain: Callable[[], object], idle_s: float, stop: asyncio.Event) -> None:
    tick = min(idle_s / 4, 1.0)
    while not stop.is_set():
        worker = brain()  # the current one: ``UseModel`` may have replaced it
        if isinstance(worker, WorkerBrain) and worker.snapshots is not None:
            idle = not worker.busy and time.monotonic() - worker.last_used >= idle_s
            if idle and worker.awake:
                try:
                    await asyncio.to_thread(worker.checkpoint, idle_s=idle_s)
                except WorkerError as exc:  # the worker died while parking: the next call starts one
                    log.warning("checkpoint skipped: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), tick)


def idle_checkpoints(
    brain: Callable[[], object], cfg: SnapshotConfig, stop: asyncio.Event
) -> asyncio.Task[None] | None:
    """Checkpoint the current brain's worker (``brain()``) whenever no call reached it for
    ``cfg.idle_s``, until ``stop``; None (no task) unless it is a snapshotting ``WorkerBrain`` now."""
    first = brain()
    if not isinstance(first, WorkerBrain) or first.snapshots is None:
        return None
    return asyncio.create_task(_checkpoint_loop(brain, cfg.idle_s, stop), name="idle-checkpoints")
