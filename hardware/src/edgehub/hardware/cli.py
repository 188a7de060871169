"""``edgehub hardware ...``: what this machine is, which profile fits it, and the settings that follow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from edgehub.cli.common import JsonOpt, console, fail

from .areas import HARDWARE
from .errors import HardwareError
from .machine import Machine, detect
from .matching import match, mismatches, specificity
from .profile import BUILTIN_PROFILES, Profile, load_profiles, profile_schema
from .settings import derive

hardware_app = typer.Typer(help=HARDWARE.help, no_args_is_help=True)

ProfilesOpt = Annotated[
    Path | None,
    typer.Option(
        "--profiles",
        help="Folder of extra profiles (*.toml); a profile with a built-in's name replaces it.",
    ),
]
RootOpt = Annotated[
    Path, typer.Option("--root", help="Read /proc and /sys under this folder (a mounted device image).")
]


def _profiles(extra: Path | None) -> tuple[Profile, ...]:
    try:
        return load_profiles(BUILTIN_PROFILES, *([extra] if extra else []))
    except HardwareError as exc:
        fail(exc)


@hardware_app.command("detect")
def detect_cmd(profiles: ProfilesOpt = None, root: RootOpt = Path("/"), as_json: JsonOpt = False) -> None:
    """Print this machine's facts, the profile that fits it and the settings it implies."""
    loaded = _profiles(profiles)
    machine = detect(root)
    try:
        profile = match(machine, loaded)
    except HardwareError as exc:
        fail(exc)
    settings = derive(machine, profile)
    if as_json:
        out = {"machine": machine.to_dict(), "profile": _profile_dict(profile)}
        print(json.dumps({**out, "settings": settings.to_dict()}, indent=2))
        return
    asked = {flag for p in loaded for flag in p.match.cpu_flags}
    console.print(_facts_table(machine, asked))
    console.print(f"profile: [bold]{profile.name}[/] ({profile.description}) from {profile.source}")
    table = Table("setting", "value", title="derived settings")
    for key, value in settings.to_dict().items():
        if key != "profile":
            table.add_row(key, "-" if value is None else str(value))
    console.print(table)


@hardware_app.command("profiles")
def profiles_cmd(profiles: ProfilesOpt = None, root: RootOpt = Path("/"), as_json: JsonOpt = False) -> None:
    """List the profiles, most specific first, and whether each fits this machine."""
    loaded = sorted(_profiles(profiles), key=lambda p: (tuple(-int(x) for x in specificity(p)), p.name))
    machine = detect(root)
    rows = [(p, mismatches(machine, p.match)) for p in loaded]
    if as_json:
        out = [{**_profile_dict(p), "matches": not why, "mismatches": why} for p, why in rows]
        print(json.dumps(out, indent=2))
        return
    table = Table("profile", "description", "fits this machine")
    for p, why in rows:
        table.add_row(p.name, p.description, "[green]yes[/]" if not why else "no: " + "; ".join(why))
    console.print(table)


@hardware_app.command("schema")
def schema_cmd() -> None:
    """Print the JSON schema profile files are validated against."""
    print(json.dumps(profile_schema(), indent=2))


def _profile_dict(profile: Profile) -> dict[str, Any]:
    return {"name": profile.name, "description": profile.description, "file": str(profile.source)}


def _facts_table(machine: Machine, asked: set[str]) -> Table:
    """All facts; of the CPU flags (often over a hundred) only those some profile asks for, by name."""
    table = Table("fact", "value", title="this machine")
    for key, value in machine.to_dict().items():
        if key == "disks":
            value = ", ".join(f"{d['name']} ({d['storage']}, {d['size_mb']} MB)" for d in value)
        elif key == "cpu_flags":
            named = " ".join(sorted(asked & machine.cpu_flags))
            value = f"{len(value)} flags" + (f", among them {named}" if named else "")
        elif isinstance(value, list):
            value = " ".join(value)
        table.add_row(key, str(value) or "-")
    return table
