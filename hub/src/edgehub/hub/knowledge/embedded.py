"""A local Neo4j Community server: what the hub starts when no ``[neo4j] uri`` is configured, and what the
test harness starts (once per test session: a JVM takes seconds to start).

The server is ``hub/neo4j-launcher``: Neo4j's embedded DBMS with its Bolt connector on 127.0.0.1, built
by ``scripts/bootstrap.sh`` into ``$EDGEHUB_CACHE/neo4j/lib`` (jars resolved by Maven from Maven
Central). This module only runs it: ``java -cp lib/* dev.edgehub.neo4j.Launcher``, with a bounded heap
and page cache, its output in ``<data_dir>/launcher.log``, and SIGTERM on the hub's death.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from edgehub.sync import free_port
from edgehub.sync.server import die_with_parent

from .errors import Neo4jLaunchError

READY = "edgehub-neo4j ready"
LAUNCHER_CLASS = "dev.edgehub.neo4j.Launcher"
LAUNCHER_JAR = "edgehub-neo4j-launcher.jar"
PORT_IN_USE = 3  # the launcher's exit status when Bolt's port is taken


def default_launcher_dir() -> Path:
    """Where bootstrap.sh builds the launcher: ``$EDGEHUB_CACHE/neo4j`` (default ``~/.cache/edgehub``)."""
    return Path(os.environ.get("EDGEHUB_CACHE", Path.home() / ".cache" / "edgehub")) / "neo4j"


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    found = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not found or not Path(found).exists():
        raise Neo4jLaunchError("java not found: install a JDK 17 (make setup does) or set JAVA_HOME")
    return found


@dataclass
class Neo4jServer:
    """A running Neo4j launcher subprocess; user ``neo4j`` with ``password``."""

    data_dir: Path
    port: int
    password: str
    launcher_dir: Path
    heap_mb: int = 512
    pagecache_mb: int = 128
    process: asyncio.subprocess.Process | None = None
    started_in: float = 0.0
    """Seconds the last start took, from exec to the ready line."""
    user: str = "neo4j"

    @property
    def uri(self) -> str:
        return f"bolt://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "launcher.log"

    @classmethod
    async def start(
        cls,
        data_dir: Path,
        *,
        port: int = 0,
        password: str | None = None,
        launcher_dir: Path | None = None,
        heap_mb: int = 512,
        pagecache_mb: int = 128,
        ready_timeout: float = 300,
    ) -> Neo4jServer:
        """Start on ``port`` (0: a free loopback port) with the data in ``data_dir``; returns once Bolt
        accepts authenticated sessions. ``password`` None: a random one (the launcher applies it even
        to an existing data dir)."""
        if password is not None and password.startswith("-"):
            # neo4j-admin's set-initial-password would read it as an option and refuse to start
            raise Neo4jLaunchError("the embedded Neo4j's password may not start with '-'")
        server = cls(
            Path(data_dir),
            port or free_port(),
            password or secrets.token_hex(16),  # token_urlsafe may begin with "-" (1 start in 64 failed)
            Path(launcher_dir) if launcher_dir else default_launcher_dir(),
            heap_mb,
            pagecache_mb,
        )
        await server._launch(ready_timeout, fixed_port=bool(port))
        return server

    def _command(self) -> list[str]:
        lib = self.launcher_dir / "lib"
        if not (lib / LAUNCHER_JAR).exists():
            raise Neo4jLaunchError(f"the Neo4j launcher is not built in {lib}: run scripts/bootstrap.sh")
        return [
            _java(),
            f"-Xms{min(256, self.heap_mb)}m",
            f"-Xmx{self.heap_mb}m",
            "-XX:+ExitOnOutOfMemoryError",
            "-cp",
            f"{lib}/*",
            LAUNCHER_CLASS,
            "--home",
            str(self.data_dir),
            "--port",
            str(self.port),
            "--pagecache-mb",
            str(self.pagecache_mb),
        ]

    async def _launch(self, ready_timeout: float = 300, *, fixed_port: bool = True) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(20):  # the port may be taken between choosing it and the JVM binding it
            t0 = time.monotonic()
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            with self.log_path.open("ab") as log_file:  # a file, not a pipe nobody reads
                self.process = await asyncio.create_subprocess_exec(
                    *die_with_parent(),
                    *self._command(),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=log_file,
                    env={**os.environ, "NEO4J_PASSWORD": self.password},
                    start_new_session=True,
                )
            if await self._ready(offset, ready_timeout):
                self.started_in = time.monotonic() - t0
                return
            if self.process.returncode != PORT_IN_USE:
                tail = self._log_tail(offset)
                await self.stop(sig=signal.SIGKILL)
                raise Neo4jLaunchError(f"Neo4j did not start: {tail}", log=self.log_path)
            if not fixed_port:
                self.port = free_port()
            await asyncio.sleep(0.5)
        raise Neo4jLaunchError(
            f"127.0.0.1:{self.port} stayed in use; Neo4j could not start", log=self.log_path
        )

    def _output(self, offset: int) -> str:
        """What this launch wrote to the log (the launcher itself prints a few lines only)."""
        with contextlib.suppress(OSError), self.log_path.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
        return ""

    def _log_tail(self, offset: int) -> str:
        return self._output(offset)[-800:].strip() or "(no output)"

    async def _ready(self, offset: int, within: float) -> bool:
        """True once the launcher printed its ready line; False if it exited or ``within`` passed."""
        assert self.process is not None
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if READY in self._output(offset):
                return True
            if self.process.returncode is not None:
                return False
            await asyncio.sleep(0.1)
        return False

    async def restart(self, ready_timeout: float = 300) -> None:
        """Stop (SIGTERM: a clean shutdown) and start again on the same port and data."""
        await self.stop()
        await self._launch(ready_timeout)

    async def kill(self) -> None:
        """kill -9: no clean shutdown (Neo4j recovers from its transaction log on the next start)."""
        await self.stop(sig=signal.SIGKILL)

    async def stop(self, *, sig: int = signal.SIGTERM, grace: float = 60) -> None:
        """Idempotent; SIGKILL if a clean shutdown takes longer than ``grace`` seconds."""
        if self.process is None or self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        try:
            await asyncio.wait_for(self.process.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            await self.process.wait()

    async def __aenter__(self) -> Neo4jServer:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
