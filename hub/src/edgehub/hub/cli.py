"""``edgehub hub ...``: run the hub daemon, and read its fleet registry."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from pathlib import Path
from typing import Annotated, NoReturn

import nats
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from edgehub.sync import SyncError

from .app import HubDaemon
from .config import HubConfig, load_config
from .errors import HubError
from .registry import AgentRegistry

console = Console()
err = Console(stderr=True, soft_wrap=True)
hub_app = typer.Typer(
    help="The hub: fleet registry over NATS JetStream (management API to come).", no_args_is_help=True
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
            err.print(f"hub {cfg.hub.id} listening for edges on {hub.url}")
            await hub.run()

    try:
        asyncio.run(main())
    except (HubError, SyncError, OSError) as exc:
        fail(exc)


@hub_app.command("agents")
def hub_agents(
    nats_url: Annotated[str, typer.Option("--nats", help="The hub's NATS URL.")] = "nats://127.0.0.1:4222",
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines.")] = False,
) -> None:
    """List the agents the hub knows of, from the fleet registry."""

    async def main() -> list[dict[str, object]]:
        nc = await nats.connect(nats_url, max_reconnect_attempts=0, connect_timeout=3)
        try:
            return await AgentRegistry(nc.jetstream()).all()
        finally:
            await nc.close()

    try:
        records = asyncio.run(main())
    except Exception as exc:
        fail(f"cannot read the registry at {nats_url}: {exc.__class__.__name__}: {exc}", 1)
    if as_json:
        for r in records:
            print(json.dumps(r))
        return
    table = Table("agent", "device", "status", "step", "last event")
    for r in records:
        table.add_row(
            str(r["agent_id"]), str(r["device_id"]), str(r["status"]), str(r["step"]), str(r["last_event"])
        )
    console.print(table)
