"""Concrete runtime settings for one machine under one profile.

A profile states what its device class can afford; ``derive`` fits that to the machine actually found,
because the same profile meets boards with less memory (a 2 GB Pi 5), containers with fewer cores, and
the generic fallback meets anything. The caps only ever lower a profile's values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .machine import Machine, StorageClass
from .profile import Profile

_RAM_BACKED = (Path("/dev/shm"), Path("/run"))
_MIN_MB = 16  # the smallest limit the edge's config accepts


@dataclass(frozen=True)
class Settings:
    """What the edge should run with on this machine, unless its own config says otherwise."""

    profile: str
    """Name of the profile these settings come from (what the edge reports to the hub)."""
    threads: int
    """llama.cpp threads: the profile's, at most one per usable core."""
    n_ctx: int
    n_batch: int
    """The profile's, at most ``n_ctx``."""
    model: str
    """Recommended model."""
    quantisation: str
    model_max_params_b: float
    model_max_mb: int
    """Largest model file: the profile's, within half of the usable memory (the model is mapped whole)."""
    snapshot_dir: Path | None
    """CRIU image folder; None: the edge's default."""
    snapshot_max_mb: int
    """Largest image; within a quarter of the usable memory when ``snapshot_dir`` is RAM-backed."""
    sandbox_memory_mb: int
    """Per-command memory limit: the profile's, within a quarter of the usable memory."""
    sandbox_max_pids: int
    storage: StorageClass
    """Class of the primary disk, as detected."""
    store_budget_mb: int = 1024
    """What the edge's store retention keeps its data within: the profile's, within an eighth of the
    primary disk."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (paths as strings)."""
        out = asdict(self)
        out["snapshot_dir"] = str(self.snapshot_dir) if self.snapshot_dir else None
        return out

    def as_edge_config(self) -> dict[str, dict[str, Any]]:
        """The settings in the shape of edge.toml's sections, to lay under the edge's own config."""
        tree: dict[str, dict[str, Any]] = {
            "model": {"n_threads": self.threads, "n_ctx": self.n_ctx, "n_batch": self.n_batch},
            "sandbox": {"memory_mb": self.sandbox_memory_mb, "max_pids": self.sandbox_max_pids},
            "retention": {"budget_mb": self.store_budget_mb},
        }
        if self.snapshot_dir is not None:
            tree["snapshot"] = {"dir": str(self.snapshot_dir)}
        return tree


def derive(machine: Machine, profile: Profile) -> Settings:
    """Fit ``profile``'s runtime to ``machine``; unknown machine facts (0) leave the profile's values."""
    rt = profile.runtime
    memory = machine.usable_memory_mb
    snapshot_cap = memory // 4 if _ram_backed(rt.snapshot.dir) else 0
    return Settings(
        profile=profile.name,
        threads=max(1, _cap(rt.threads, machine.usable_cores)),
        n_ctx=rt.n_ctx,
        n_batch=min(rt.n_batch, rt.n_ctx),
        model=rt.model.name,
        quantisation=rt.model.quantisation,
        model_max_params_b=rt.model.max_params_b,
        model_max_mb=max(_MIN_MB, _cap(rt.model.max_file_mb, memory // 2)),
        snapshot_dir=rt.snapshot.dir,
        snapshot_max_mb=max(_MIN_MB, _cap(rt.snapshot.max_mb, snapshot_cap)),
        sandbox_memory_mb=max(_MIN_MB, _cap(rt.sandbox.memory_mb, memory // 4)),
        sandbox_max_pids=rt.sandbox.max_pids,
        storage=machine.storage,
        store_budget_mb=max(_MIN_MB, _cap(rt.store.budget_mb, machine.primary_disk_mb // 8)),
    )


def _cap(value: int, limit: int) -> int:
    return min(value, limit) if limit > 0 else value


def _ram_backed(folder: Path | None) -> bool:
    return folder is not None and any(folder.is_relative_to(p) for p in _RAM_BACKED)
