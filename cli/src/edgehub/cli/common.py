"""What every ``edgehub`` command shares: the consoles, the common options, ``fail`` and the exit codes.

Exit codes, the same for every command:

    0  done: what was asked happened
    1  it ran, and the outcome is negative: an agent failed or was stopped, a required check failed,
       the hub refused the request (not found, permission denied, a failed precondition), the policy
       denies a call
    2  it could not run: bad usage, input or configuration, a file or the hub unreachable
    3  it waits for a person: an agent paused for an operator's approval
"""

from __future__ import annotations

import logging
from enum import IntEnum
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1
    """Ran, with a negative outcome."""
    ERROR = 2
    """Could not run: usage, input, configuration, reachability."""
    WAITING = 3
    """Waits for an operator's decision."""


console = Console()
"""Standard output: what the command was asked for."""
err = Console(stderr=True, soft_wrap=True)
"""Standard error: progress, warnings and errors."""

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="The daemon's TOML config (default: built-in defaults + environment).",
        readable=False,  # the loader reports an unreadable file in one line, as every other bad file
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output (JSON lines).")]


def fail(message: object, code: ExitCode = ExitCode.ERROR) -> NoReturn:
    """Print ``message`` as an error (as text: paths and TOML errors may hold [brackets]) and end the
    command with ``code``."""
    err.print(f"[bold red]error:[/] {escape(str(message))}")
    raise typer.Exit(int(code))


def exit_with(code: ExitCode) -> NoReturn:
    """End the command with ``code`` and nothing more to say (the output said it)."""
    raise typer.Exit(int(code))


def setup_logging(level: str) -> None:
    """Daemon logs to standard error (``--log-level``: debug, info, warning, error)."""
    logging.basicConfig(
        level=level.upper(), format="%(message)s", handlers=[RichHandler(console=err, show_path=False)]
    )
