"""What the edge's commands share: the config (with this machine's hardware profile under it) and the store
(opened read-only by the commands that only show what is there).

Options, ``fail`` and the exit codes are the whole CLI's (``edgehub.cli.common``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from edgehub.cli.common import err, fail
from edgehub.protocol.ids import InvalidId, check_id

from ..config import EdgeConfig, load_config
from ..errors import EdgeError
from ..safety.build import build_scrubber
from ..store.base import DeviceStore
from ..store.sqlite import SqliteStore


def agent_id(value: str) -> str:
    """A typer callback: an agent id argument checked by the one id rule (one error line, exit 2)."""
    try:
        return check_id(value, "AGENT_ID")
    except InvalidId as exc:
        fail(exc.message)


def approval_key(value: str) -> str:
    """A typer callback: an approval key (AGENT/STEP), its agent id checked by the one id rule."""
    agent, _, step = value.rpartition("/")
    if not step.isdecimal() or len(step) > 10:
        fail(f"KEY {value!r} is not AGENT/STEP, e.g. agent-1a2b/3")
    return f"{agent_id(agent)}/{step}"


AgentIdArg = Annotated[str, typer.Argument(help="The agent's id.", callback=agent_id)]


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


def read_store(cfg: EdgeConfig) -> DeviceStore | None:
    """The store opened read-only for a command that only shows what is there, or None when this device
    has none yet: such a command creates nothing (no data dir, store or vault key)."""
    if not cfg.store_path.exists():
        return None
    try:
        store = SqliteStore.open_readonly(cfg.store_path, device_id=cfg.device.id)
    except EdgeError as exc:
        fail(exc)
    return _warn_rolled_back(store)


def open_store(cfg: EdgeConfig) -> DeviceStore:
    """The device's store; a damaged one ends the command. One that lost commits (behind its watermark)
    opens read-only, and a warning says so first: what it shows is older than what happened."""
    try:
        store = SqliteStore.open(cfg.store_path, device_id=cfg.device.id, outgoing=build_scrubber(cfg))
    except EdgeError as exc:
        fail(exc)
    return _warn_rolled_back(store)


def _warn_rolled_back(store: SqliteStore) -> SqliteStore:
    """``store``, after a warning when it lost commits (behind its watermark): what it shows is older
    than what happened."""
    if (rolled_back := store.rolled_back) is not None:
        err.print(f"[bold red]warning:[/] {escape(str(rolled_back))}")
    return store
