"""``edgehub hub ...``: run the hub daemon, and read its fleet registry."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler

from edgehub.sync import SyncError

from .app import HubDaemon
from .config import HubConfig, load_config
from .errors import HubError

console = Console()
err = Console(stderr=True, soft_wrap=True)
hub_app = typer.Typer(
    help="The hub daemon: fleet registry over NATS JetStream and the management API.", no_args_is_help=True
)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="hub.toml (default: defaults + environment)")
]


def fail(message: object, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def load(path: Path | None) -> HubConfig:
    try:
        return load_config(path)
    except HubError as exc:
        fail(exc)


@hub_app.command("run")
def hub_run(
    config: ConfigOpt = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
) -> None:
    """Run the hub until SIGTERM/SIGINT (starts an embedded nats-server when no NATS url is configured)."""
    cfg = load(config)
    logging.basicConfig(level=log_level.upper(), format="%(message)s", handlers=[RichHandler(console=err)])

    async def main() -> None:
        async with HubDaemon(cfg) as hub:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, hub.request_stop)
            err.print(f"hub {cfg.hub.id} listening for edges on {hub.url}, API on {hub.api_address}")
            await hub.run()

    try:
        asyncio.run(main())
    except (HubError, SyncError, OSError) as exc:
        fail(exc)
