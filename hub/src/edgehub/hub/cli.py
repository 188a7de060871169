"""``edgehub hub ...``: run the hub daemon, and read its fleet registry."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import uuid
from pathlib import Path
from typing import Annotated, NoReturn

import nats
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from edgehub.protocol.v1 import commands_pb2
from edgehub.sync import SyncError
from edgehub.sync.commands import new_command, send_command

from .app import HubDaemon
from .config import HubConfig, load_config
from .errors import HubError
from .registry import AgentRegistry, DeviceRegistry

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


NatsOpt = Annotated[str, typer.Option("--nats", help="The hub's NATS URL.")]


@hub_app.command("devices")
def hub_devices(
    nats_url: NatsOpt = "nats://127.0.0.1:4222",
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines.")] = False,
) -> None:
    """List devices with their reported twin; online = heartbeats arriving."""

    async def main() -> list[dict[str, object]]:
        nc = await nats.connect(nats_url, max_reconnect_attempts=0, connect_timeout=3)
        try:
            return await DeviceRegistry(nc.jetstream()).all()
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
    table = Table("device", "online", "last seen", "version", "load", "agents running", "outbox")
    for r in records:
        online = "[green]yes[/]" if r["online"] else "[red]no[/]"
        running = ", ".join(r.get("agents_running", [])) or "-"  # type: ignore[arg-type]
        table.add_row(
            str(r["device_id"]),
            online,
            f"{r['last_seen_s']} s ago",
            str(r.get("version")),
            f"{r.get('load', 0):.2f}",
            running,
            str(r.get("outbox_depth")),
        )
    console.print(table)


DeviceOpt = Annotated[str, typer.Option("--device", "-d", help="Target device id.")]


def _send(nats_url: str, command: commands_pb2.Command) -> None:
    async def main() -> None:
        nc = await nats.connect(nats_url, max_reconnect_attempts=0, connect_timeout=3)
        try:
            await send_command(nc.jetstream(), command)
        finally:
            await nc.close()

    try:
        asyncio.run(main())
    except Exception as exc:
        fail(f"cannot send the command through {nats_url}: {exc.__class__.__name__}: {exc}", 1)
    console.print(f"sent {command.command_id} to {command.device_id}: {command.WhichOneof('body')}")


@hub_app.command("start-agent")
def hub_start_agent(
    device: DeviceOpt,
    goal: Annotated[str, typer.Option("--goal", "-g", help="What the agent should achieve.")],
    agent_id: Annotated[str, typer.Option(help="Agent id (default: generated).")] = "",
    by: Annotated[str, typer.Option(help="Who issues it (audited).")] = "cli",
    nats_url: NatsOpt = "nats://127.0.0.1:4222",
) -> None:
    """Start an agent on a device (delivered when the device is online; applied once)."""
    cmd = new_command(device, by)
    cmd.start_agent.agent_id = agent_id or f"agent-{uuid.uuid4().hex[:12]}"
    cmd.start_agent.goal = goal
    _send(nats_url, cmd)
    console.print(f"agent {cmd.start_agent.agent_id}")


@hub_app.command("stop-agent")
def hub_stop_agent(
    agent_id: Annotated[str, typer.Argument(help="The agent to stop.")],
    device: DeviceOpt,
    reason: Annotated[
        str, typer.Option(help="Recorded as the agent's stop reason.")
    ] = "stopped by an operator",
    by: Annotated[str, typer.Option(help="Who issues it (audited).")] = "cli",
    nats_url: NatsOpt = "nats://127.0.0.1:4222",
) -> None:
    """Stop an agent after its current step (checkpointed)."""
    cmd = new_command(device, by)
    cmd.stop_agent.agent_id, cmd.stop_agent.reason = agent_id, reason
    _send(nats_url, cmd)


@hub_app.command("decide")
def hub_decide(
    key: Annotated[str, typer.Argument(help="Approval key AGENT/STEP.")],
    device: DeviceOpt,
    by: Annotated[str, typer.Option("--by", help="Who decides (audited).")],
    approve: Annotated[bool, typer.Option("--approve/--deny", help="Let the call run, or refuse it.")],
    note: Annotated[str, typer.Option(help="Why.")] = "",
    nats_url: NatsOpt = "nats://127.0.0.1:4222",
) -> None:
    """Relay an approval decision to the device where the agent waits."""
    if not by.strip():
        fail("say who decides (--by NAME): decisions are audited")
    cmd = new_command(device, by)
    d = cmd.decide_approval
    d.key, d.approve, d.by, d.note = key, approve, by, note
    _send(nats_url, cmd)
