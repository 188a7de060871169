"""Root of the ``edgehub`` CLI.

Each installed member contributes sub-apps through the ``edgehub.cli`` entry point group (name =
subcommand, value = an ``Area``: the area's help and where its Typer app lives; a plain Typer app is
accepted too and mounted at once). So an edge device that installs only ``edgehub-edge`` gets
``edgehub edge`` and ``edgehub agent`` without pulling in the hub, and the hub and edge never import
each other.

Two members may contribute to one area (``edgehub policy``: the edge's check/try/default, the hub's
push/status/rollback): their commands are mounted together in one group, with both helps.

Areas are loaded lazily (``_Areas``): ``edgehub --help`` reads only the areas' descriptors, and
``edgehub edge run`` imports the edge daemon's CLI and nothing of the hub's. Importing every member's
app up front cost 2.7 s and 143 MB before any command ran.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from .area import Area

GROUP = "edgehub.cli"

err_console = Console(stderr=True, soft_wrap=True)

_LAZY: dict[str, list[Area]] = {}
"""Areas described by their entry points (by subcommand; several members may add to one); each group
imports its areas when it is named."""
_BROKEN: set[str] = set()
"""Lazy areas whose app failed to import."""


class _Areas(TyperGroup):
    """The root group: lists the lazy areas beside the mounted ones, imports an area's app when a
    command line names it."""

    def list_commands(self, ctx: typer.Context) -> list[str]:  # type: ignore[override]
        return sorted({*self.commands, *_LAZY})

    def get_command(self, ctx: typer.Context, cmd_name: str) -> TyperCommand | None:  # type: ignore[override]
        if cmd_name in self.commands or cmd_name not in _LAZY or cmd_name in _BROKEN:
            return self.commands.get(cmd_name)  # type: ignore[return-value]
        return TyperCommand(name=cmd_name, help=_help(_LAZY[cmd_name]))  # a stand-in for the listing

    def resolve_command(self, ctx: typer.Context, args: list[str]) -> tuple[str | None, object, list[str]]:  # type: ignore[override]
        if args:
            self.load(args[0])
        return super().resolve_command(ctx, args)

    def load(self, name: str) -> None:
        """Mount the lazy area ``name`` (its app imported now); a broken area is left out with a
        warning, as if it were not installed."""
        areas = _LAZY.get(name)
        if areas is None or name in self.commands or name in _BROKEN:
            return
        subs = []
        for area in areas:
            try:
                subs.append(area.load())
            except Exception as exc:  # a broken plugin must not take the whole CLI down
                _warn(name, area.app, exc)
        if not subs:
            _BROKEN.add(name)
            return
        sub = subs[0] if len(subs) == 1 else _merged(subs)
        mounted = typer.Typer()
        mounted.add_typer(sub, name=name)  # as an eager mount would: a group even with one command
        self.commands[name] = typer.main.get_group(mounted).commands[name]


app = typer.Typer(
    name="edgehub",
    cls=_Areas,
    help="Autonomous AI agents on edge devices, coordinated by a hub.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """The root is a group even before any area is mounted (every area may be lazy)."""


def _help(areas: list[Area]) -> str:
    return " ".join(area.help for area in areas)


def _merged(subs: list[typer.Typer]) -> typer.Typer:
    """One group holding the commands of every member's app for an area."""
    merged = typer.Typer(help=" ".join(s.info.help for s in subs if isinstance(s.info.help, str)),
                         no_args_is_help=True)  # fmt: skip
    for sub in subs:
        merged.registered_commands.extend(sub.registered_commands)
        merged.registered_groups.extend(sub.registered_groups)
    return merged


def _warn(name: str, value: str, exc: Exception) -> None:
    err_console.print(f"[yellow]warning:[/] CLI area {name!r} ({value}) failed to load: {exc}")


def _mount_areas(root: typer.Typer) -> None:
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        try:
            sub = ep.load()
        except Exception as exc:
            _warn(ep.name, ep.value, exc)
            continue
        if isinstance(sub, Area):
            _LAZY.setdefault(ep.name, []).append(sub)
        else:
            root.add_typer(sub, name=ep.name)


_mount_areas(app)


def main() -> None:
    """Console-script entry point. A usage error (an unknown option, a missing or invalid value) is one
    line naming the command, exit status 2, as every other input error of the CLI."""
    try:
        code = app(standalone_mode=False, prog_name="edgehub")
    except typer.Abort:
        err_console.print("aborted", markup=False)
        sys.exit(1)
    except typer.TyperException as exc:  # typer's click errors: usage errors carry the command's context
        ctx = getattr(exc, "ctx", None)
        where = f"{ctx.command_path}: " if ctx is not None else ""
        see = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        if message := exc.format_message():  # none: the help was shown for a command line with no command
            err_console.print(f"error: {where}{message}{see}", markup=False)
        sys.exit(getattr(exc, "exit_code", 1))
    sys.exit(code if isinstance(code, int) else 0)
