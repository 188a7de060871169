"""Root of the ``edgehub`` CLI.

Each installed member contributes Typer sub-apps through the ``edgehub.cli`` entry point group
(name = subcommand, value = ``module:typer_app``). So an edge device that installs only
``edgehub-edge`` gets ``edgehub edge`` and ``edgehub agent`` without pulling in the hub, and the hub
and edge never import each other.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

import typer
from rich.console import Console

GROUP = "edgehub.cli"

app = typer.Typer(
    name="edgehub",
    help="Autonomous AI agents on edge devices, coordinated by a hub.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err_console = Console(stderr=True, soft_wrap=True)


def _mount_areas(root: typer.Typer) -> None:
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        try:
            sub = ep.load()
        except Exception as exc:  # a broken plugin must not take the whole CLI down
            err_console.print(f"[yellow]warning:[/] CLI area {ep.name!r} ({ep.value}) failed to load: {exc}")
            continue
        root.add_typer(sub, name=ep.name)


_mount_areas(app)


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
