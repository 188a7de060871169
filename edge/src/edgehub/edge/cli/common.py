"""What the edge's commands share: the config (with this machine's hardware profile under it) and the store.

Options, ``fail`` and the exit codes are the whole CLI's (``edgehub.cli.common``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from edgehub.cli.common import err, fail

from ..config import EdgeConfig, load_config
from ..errors import EdgeError
from ..safety.build import build_scrubber
from ..store.base import DeviceStore
from ..store.sqlite import SqliteStore


def load(path: Path | None) -> EdgeConfig:
    try:
        return load_config(path, profile=hardware_settings())
    except EdgeError as exc:
        fail(exc)


def hardware_settings() -> Mapping[str, Mapping[str, object]]:
    """This machine's hardware profile's settings (``edgehub hardware detect``), in edge.toml's shape;
    none when it cannot be read (a warning says why: the built-in defaults apply)."""
    try:
        from edgehub.hardware import this_machine

        return this_machine().as_edge_config()
    except Exception as exc:  # a broken profile must not stop the daemon
        err.print(f"[yellow]warning:[/] hardware profile not applied: {exc}")
        return {}


def open_store(cfg: EdgeConfig) -> DeviceStore:
    try:
        return SqliteStore.open(cfg.store_path, device_id=cfg.device.id, outgoing=build_scrubber(cfg))
    except EdgeError as exc:
        fail(exc)
