"""``edgehub hub ...``: run the hub daemon, check its configuration, back it up and restore it, and
write what NATS clients and leaf nodes need."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Annotated

import nkeys
import typer
from nats.errors import Error as NatsError

from edgehub.cli.common import ConfigOpt, err, fail, setup_logging
from edgehub.protocol.errors import EdgehubError
from edgehub.protocol.ids import DEVICE_ID_MAX, check_id, holder
from edgehub.sync import SyncError
from edgehub.sync.auth import Trust, creds_text, keypair, new_seed, public_key, write_secret
from edgehub.sync.server import dial_host
from edgehub.sync.tls import CertificateAuthority, nats_tls

from ..app import HubDaemon
from ..backup import PASSPHRASE_ENV, BackupError, backup, check, read_passphrase, restore
from ..config import HubConfig, load_config
from ..errors import HubError
from ..fleet.leaf import leaf_user, record_issued, write_leaf_folder
from .areas import HUB

hub_app = typer.Typer(help=HUB.help, no_args_is_help=True)


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
    setup_logging(log_level)

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


def _hub_nats(cfg: HubConfig, nats_url: str | None) -> str:
    """The hub's NATS URL for a command run where the hub runs (its trust folder must be there)."""
    n = cfg.nats
    scheme = "tls" if n.client_tls else "nats"
    if not (
        url := nats_url
        or n.url
        or (n.embedded_port and f"{scheme}://{dial_host(n.embedded_host)}:{n.embedded_port}")
    ):
        fail("the embedded server's port is 0 (any): pass --nats-url")
    if not (cfg.auth.dir / "account.nk").exists():
        fail(
            f"no trust folder at {cfg.auth.dir}: run this where the hub runs (or set EDGEHUB_HUB__AUTH__DIR)"
        )
    return url


NatsUrlOpt = Annotated[
    str | None, typer.Option(help="The hub's NATS (default: the configured url, or the embedded server's).")
]


@hub_app.command("nats-creds")
def hub_nats_creds(
    name: Annotated[
        str, typer.Argument(help="Whose they are: recorded as nats:NAME (edgehub devices revoke nats:NAME).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="The .creds file to write (0600).")],
    ttl: Annotated[
        float, typer.Option(min=60, max=30 * 86400, help="Seconds until they expire (default 8 hours).")
    ] = 8 * 3600,
    config: ConfigOpt = None,
    nats_url: NatsUrlOpt = None,
) -> None:
    """NATS credentials for an operator's natscli: an unrestricted user of the hub's account (streams,
    consumers, KV), a new key, expiring after TTL, recorded like a device's so that `edgehub devices
    revoke nats:NAME` cuts them off. Run where the hub runs (it reads the trust folder). Prints the
    natscli options that go with them (TLS first, with the hub's CA)."""
    cfg = load(config)
    try:
        who = holder("nats", name)
    except EdgehubError as exc:
        fail(exc)
    url = _hub_nats(cfg, nats_url)
    trust, ca = Trust.load_or_create(cfg.auth.dir), CertificateAuthority.load_or_create(cfg.auth.dir)
    seed = new_seed(nkeys.PREFIX_BYTE_USER)
    user_key = public_key(keypair(seed))
    try:
        tls = nats_tls([url], ca.pem, allow_plaintext=cfg.nats.allow_plaintext)
        asyncio.run(record_issued(trust, url, who, user_key, tls=tls))
    except (OSError, SyncError, TimeoutError, NatsError) as exc:
        fail(f"{exc or exc.__class__.__name__} (is the hub running, its NATS at {url}?)")
    write_secret(out, creds_text(trust.user_jwt(who, user_key, None, ttl_s=ttl), seed))
    until = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(time.time() + ttl))
    print(f"{out}: NATS credentials {who} ({user_key}), until {until}, 0600")
    tls_flags = f" --tlsfirst --tlsca {cfg.auth.dir / 'ca.pem'}" if url.startswith("tls://") else ""
    print(f"natscli: nats --server {url}{tls_flags} --creds {out} stream ls")


@hub_app.command("leaf-config")
def hub_leaf_config(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder to write (trust.conf, account.pub, leaf.creds).")
    ],
    name: Annotated[str, typer.Option(help="The leaf's name (its credentials are leaf:NAME).")] = "leaf",
    config: ConfigOpt = None,
    nats_url: NatsUrlOpt = None,
    renew: Annotated[
        bool, typer.Option(help="Issue new leaf credentials (and server certificate) even if OUT has some.")
    ] = False,
    tls_name: Annotated[
        list[str] | None,
        typer.Option(
            "--tls-name",
            help="A host name or IP the site's devices dial the leaf at (repeat for several): the leaf "
            "then gets a server certificate from the hub's CA and takes TLS only (server.pem, server.key).",
        ),
    ] = None,
    tls_days: Annotated[
        float, typer.Option(min=1, max=825, help="Lifetime of the leaf's server certificate.")
    ] = 90.0,
) -> None:
    """What a NATS leaf node on a site gateway needs (the edgehub_nats_leaf Ansible role): the hub's
    trust block (public JWTs, current revocations) and credentials for its connection to the hub's
    leafnode listener (leaf_port in hub.toml's nats section). Run on the hub's machine: it reads the
    trust folder and asks the running hub's NATS for revocations. Running it again changes nothing
    unless something did."""
    cfg = load(config)
    n = cfg.nats
    try:
        check_id(name, "--name", max_len=DEVICE_ID_MAX)
    except EdgehubError as exc:
        fail(exc)
    url = _hub_nats(cfg, nats_url)
    try:
        done = write_leaf_folder(
            Trust.load_or_create(cfg.auth.dir),
            url,
            out,
            name,
            renew=renew,
            ca=CertificateAuthority.load_or_create(cfg.auth.dir),
            tls_names=tls_name,
            tls_days=tls_days,
            allow_plaintext=n.allow_plaintext,
        )
    except (OSError, SyncError, TimeoutError, NatsError) as exc:
        fail(f"{exc or exc.__class__.__name__} (is the hub running, its NATS at {url}?)")
    leaf = (
        f"nats-leaf://{n.leaf_host or n.embedded_host}:{n.leaf_port} ({'TLS' if n.leaf_tls else 'plaintext'})"
        if n.leaf_port
        else "(off: set leaf_port in the nats section)"
    )
    # plain lines (no wrapping, no markup): scripts read them
    print(f"{out}/trust.conf: {'written' if done.trust_changed else 'unchanged'}")
    if done.creds_issued:
        print(f"{out}/leaf.creds: new credentials {leaf_user(name)} ({done.creds_issued}), 0600")
    else:
        print(f"{out}/leaf.creds: kept")
    if tls_name:
        print(
            f"{out}/server.pem: {'new certificate' if done.cert_issued else 'kept'} for {', '.join(tls_name)}"
        )
    print(f"account {done.account}; the hub's leafnode listener: {leaf}")


@hub_app.command("check-config")
def hub_check_config(config: ConfigOpt = None) -> None:
    """Load and check the hub's configuration (TOML and EDGEHUB_HUB__* variables) without starting
    anything: one line saying what would run, or one error line naming the bad key (exit 2). The
    edgehub_hub Ansible role validates the hub.toml it writes with this."""
    cfg = load(config)
    n = cfg.nats
    nats_part = n.url or f"embedded {'tls' if n.client_tls else 'nats'}://{n.embedded_host}:{n.embedded_port}"
    neo4j = "off" if not cfg.neo4j.enabled else (cfg.neo4j.uri or f"embedded ({cfg.neo4j.embedded_data})")
    print(f"ok: hub {cfg.hub.id}, NATS {nats_part} (store {n.embedded_store}), API {cfg.api.addr}, "
          f"trust {cfg.auth.dir}, Neo4j {neo4j}")  # fmt: skip


PassphraseOpt = Annotated[
    Path | None,
    typer.Option(
        "--passphrase-file",
        help=f"File whose first line is the passphrase the trust folder is encrypted with (default: "
        f"${PASSPHRASE_ENV}).",
        readable=False,
    ),
]


def _progress(line: str) -> None:
    err.print(line, markup=False, highlight=False)


@hub_app.command("backup")
def hub_backup(
    to: Annotated[
        Path, typer.Option("--to", help="A new folder for the backup (written as TO.partial first).")
    ],
    passphrase_file: PassphraseOpt = None,
    config: ConfigOpt = None,
    nats_url: NatsUrlOpt = None,
) -> None:
    """Back up the running hub: every JetStream stream and KV/object bucket through nats-server's
    snapshot API, the trust folder encrypted (AES-256-GCM, scrypt), and a manifest of sizes and
    sha256s. Run where the hub runs (it reads the trust folder). The knowledge graph's Neo4j is not
    included (docs/rollout.md)."""
    cfg = load(config)
    try:
        passphrase = read_passphrase(passphrase_file)
        url = _hub_nats(cfg, nats_url)
        done = backup(cfg, url, to, passphrase, _progress)
    except (BackupError, SyncError, OSError) as exc:
        fail(exc)
    print(f"{done.folder}: {done.streams} streams, {done.messages} messages, {done.bytes} bytes "
          f"in {done.seconds:.1f} s")  # fmt: skip


@hub_app.command("restore")
def hub_restore(
    from_: Annotated[Path, typer.Option("--from", help="A backup folder (`edgehub hub backup --to`).")],
    passphrase_file: PassphraseOpt = None,
    config: ConfigOpt = None,
    replace: Annotated[
        bool, typer.Option(help="Move a non-empty trust folder or JetStream store aside instead of refusing.")
    ] = False,
    check_only: Annotated[
        bool, typer.Option("--check", help="Only check the backup; change nothing.")
    ] = False,
) -> None:
    """Restore a backup into a stopped hub's trust folder and JetStream store. The whole backup is
    checked first (every file's size and sha256, the passphrase): a corrupted or incomplete one is
    refused before anything is touched. Then start the hub as usual."""
    cfg = load(config)
    try:
        checked = check(from_, read_passphrase(passphrase_file))
        if check_only:
            print(f"{from_}: complete and intact ({len(checked.manifest['streams'])} streams)")
            return
        done = restore(cfg, checked, _progress, replace=replace)
    except (BackupError, SyncError, OSError) as exc:
        fail(exc)
    print(f"restored {done.streams} streams, {done.messages} messages into {cfg.nats.embedded_store} and "
          f"the trust folder {cfg.auth.dir} in {done.seconds:.1f} s: start the hub")  # fmt: skip
