"""``edgehub edge ...``: run the daemon, enroll the device, show the config, check the device, show what
its store keeps and what its triggers did."""

from __future__ import annotations

import asyncio
import getpass
import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edgehub.cli.common import ConfigOpt, ExitCode, JsonOpt, console, err, exit_with, fail, setup_logging

from ..app import EdgeDaemon
from ..config import EdgeConfig
from ..errors import EdgeError
from ..store.sqlite import SqliteStore
from ..uplink.identity import DeviceIdentity, enroll
from .areas import EDGE
from .common import load, read_store

edge_app = typer.Typer(help=EDGE.help, no_args_is_help=True)


@edge_app.command("run")
def edge_run(
    config: ConfigOpt = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
    until_idle: Annotated[
        bool, typer.Option("--until-idle", help="Exit once no agent is left to run (batch mode).")
    ] = False,
) -> None:
    """Run the edge daemon until SIGTERM/SIGINT; running agents checkpoint and stop cleanly."""
    cfg = load(config)
    setup_logging(log_level)

    async def main() -> None:
        async with EdgeDaemon(cfg, config_path=config) as daemon:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, daemon.request_stop)
            await daemon.run(until_idle=until_idle)

    try:
        asyncio.run(main())
    except EdgeError as exc:
        fail(exc)


@edge_app.command("enroll")
def edge_enroll(
    token: Annotated[str, typer.Option("--token", envvar="EDGEHUB_ENROLL_TOKEN", help="One-time token.")],
    api: Annotated[str, typer.Option("--api", envvar="EDGEHUB_API", help="The hub's API address.")],
    ca: Annotated[
        Path, typer.Option("--ca", envvar="EDGEHUB_CA", help="The hub's CA certificate (PEM), to verify it.")
    ],
    config: ConfigOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing identity.")] = False,
) -> None:
    """Enroll this device with the hub: trade a one-time token (`edgehub devices enroll-token`) for
    its own NATS credentials and client certificate, kept in <data_dir>/identity."""
    cfg = load(config)
    try:
        existing = DeviceIdentity.load(cfg.identity_dir, cfg.device.id)
    except EdgeError:
        existing = None  # unreadable: enrolling again is the fix
    if existing is not None and not force:
        fail(f"{cfg.device.id} is already enrolled ({cfg.identity_dir}); --force to enroll again")
    try:
        ca_pem = ca.read_bytes()
    except OSError as exc:
        fail(f"cannot read the CA certificate {ca}: {exc.strerror}")
    try:
        identity = enroll(cfg.identity_dir, cfg.device.id, api, token, ca_pem)
    except EdgeError as exc:
        fail(exc)
    urls = ", ".join(identity.nats_urls) or "(none: set [hub] nats_url)"
    console.print(f"enrolled {identity.device_id}: credentials in {identity.folder}; NATS {urls}")


@edge_app.command("config")
def edge_config(config: ConfigOpt = None) -> None:
    """Print the effective configuration (file + environment + defaults) as JSON."""
    console.print_json(load(config).model_dump_json())


@edge_app.command("doctor")
def edge_doctor(
    config: ConfigOpt = None,
    store: Annotated[
        bool, typer.Option("--store", help="Check only the store, fully (SQLite's integrity_check; slower).")
    ] = False,
    accept_rollback: Annotated[
        bool,
        typer.Option(
            "--accept-rollback",
            help="With --store: accept what a store behind its watermark lost; its agents resume from the"
            " checkpoints it kept (repeating the lost steps). Recorded in the store.",
        ),
    ] = False,
    recover_from_hub: Annotated[
        bool,
        typer.Option(
            "--recover-from-hub",
            help="With --store: recover a store that lost commits from what the hub holds of this device:"
            " the outbox goes on after the hub's applied sequence, agents whose lost steps the hub saw are"
            " stopped (not resumed, so those side effects are not repeated), the rest resume. Prints what"
            " was lost and what cannot be recovered. Recorded in the store.",
        ),
    ] = False,
    by: Annotated[
        str, typer.Option(help="Who accepts (recorded with --accept-rollback or --recover-from-hub).")
    ] = "",
) -> None:
    """Check what this device needs (model, bubblewrap, CRIU, the hub, the store) and how to fix what is
    missing.

    Exit status: 0 when everything the configuration requires is there, 1 otherwise."""
    from .doctor import check_store, diagnose

    cfg = load(config)
    if accept_rollback and recover_from_hub:
        fail("--accept-rollback and --recover-from-hub: give one")
    if accept_rollback:
        _accept_rollback(cfg, store, by)
    if recover_from_hub:
        _recover_from_hub(cfg, store, by)
    findings = check_store(cfg, full=True) if store else diagnose(cfg)
    table = Table("check", "status", "found", "fix")
    for f in findings:
        missing = "[red]MISSING[/]" if f.required else "[yellow]missing (optional)[/]"
        status = "[green]OK[/]" if f.ok else missing
        table.add_row(f.name, status, f.detail, f.fix)
    console.print(table)
    if any(f.required and not f.ok for f in findings):
        exit_with(ExitCode.FAILED)


@edge_app.command("triggers")
def edge_triggers(
    config: ConfigOpt = None,
    trigger: Annotated[str | None, typer.Option("--trigger", help="Only this trigger's events.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=100_000, help="Events shown.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """The configured triggers ([[triggers]]), when each last received an event and last started an agent,
    and the newest events: which started which agent, or why none (deduped, rate_limited, cooldown,
    failed). Read-only: creates nothing."""
    from .triggers import show

    cfg = load(config)
    ids = [t.id for t in cfg.triggers]
    if trigger is not None and trigger not in ids:
        fail(f"no trigger {trigger!r} in the config (triggers: {', '.join(ids) or 'none'})")
    store = read_store(cfg)
    try:
        show(cfg, store, trigger=trigger, limit=limit, as_json=as_json)
    finally:
        if store is not None:
            store.close()


@edge_app.command("storage")
def edge_storage(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """What the store keeps per kind of data (rows, bytes, oldest), what retention may prune now and its
    setting, and the files (database, write-ahead log, free pages). Read-only: creates nothing."""
    from .storage import show

    cfg = load(config)
    store = read_store(cfg)
    if store is None:
        err.print(f"no store on this device yet ({cfg.store_path})")
        return
    try:
        assert isinstance(store, SqliteStore)
        show(store, cfg.retention, as_json=as_json)
    finally:
        store.close()


def _accept_rollback(cfg: EdgeConfig, store: bool, by: str) -> None:
    from .doctor import accept_rollback

    if not store:
        fail("--accept-rollback goes with --store")
    try:
        done = accept_rollback(cfg, by or getpass.getuser())
    except EdgeError as exc:
        fail(exc)
    console.print(
        f"rollback accepted by {done.by}: generation {done.lost.found} (watermark {done.lost.recorded});"
        f" the outbox goes on after seq {done.lost.acked_seq}; resuming from older checkpoints:"
        f" {', '.join(done.agents) or 'none'}"
    )


def _recover_from_hub(cfg: EdgeConfig, store: bool, by: str) -> None:
    from .doctor import recover_from_hub

    if not store:
        fail("--recover-from-hub goes with --store")
    try:
        done = recover_from_hub(cfg, by or getpass.getuser())
    except EdgeError as exc:
        fail(exc)
    lost = done.accepted.lost
    console.print(
        f"recovered from the hub by {done.accepted.by}: the outbox goes on after seq {lost.acked_seq}"
        f" (the hub applied {lost.hub_applied or lost.acked_seq}, the store had {lost.outbox_seq})"
    )
    for loss in done.losses:
        console.print(f"lost: {escape(loss.line)}")
        for step in loss.steps:
            console.print(f"  {escape(step)}")
    resumed = [a for a in done.accepted.agents if a not in done.stopped]
    console.print(f"stopped (would repeat what the hub saw): {', '.join(done.stopped) or 'none'}")
    console.print(f"resume from their kept checkpoints: {', '.join(resumed) or 'none'}")
    for line in done.unrecoverable:
        console.print(f"cannot be recovered: {escape(line)}")
