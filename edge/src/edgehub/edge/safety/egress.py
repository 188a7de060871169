"""Network grants: the only way out of a sandbox, and only to the hosts a policy rule names.

A sandbox has its own empty network namespace. When the rule that allowed a call grants hosts
(``network = ["api.example.com:443"]``), the call gets an egress proxy: this module's
``EgressProxy`` listens on a Unix socket in a per-call directory bound into the sandbox at
``/run/edgehub``; inside, a small forwarder (``FORWARDER``, run by the system ``python3``) listens on
``127.0.0.1:3128`` of the sandbox's own loopback and pipes each connection to that socket, and
``HTTP_PROXY``/``HTTPS_PROXY`` point clients (curl, wget, pip, git, Python) at it. The proxy accepts
``CONNECT host:port`` (HTTPS) and absolute-form requests (plain HTTP), resolves and connects on the
host side only when ``host:port`` matches a grant, and answers 403 otherwise. Raw sockets and DNS from
inside still reach nothing. Every attempt is recorded and reported with the call's output.

Grant patterns are globs on ``host:port``; a pattern without a port means ports 80 and 443.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

HEAD_LIMIT = 16_384
CONNECT_TIMEOUT_S = 10.0
SANDBOX_DIR = "/run/edgehub"
PROXY_PORT = 3128

FORWARDER = f"""\
import socket, sys, threading
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", {PROXY_PORT}))
srv.listen(64)
open("/tmp/.edgehub-egress-ready", "w").close()
def pipe(a, b):
    try:
        while True:
            data = a.recv(65536)
            if not data:
                break
            b.sendall(data)
    except OSError:
        pass
    finally:
        try:
            b.shutdown(socket.SHUT_WR)
        except OSError:
            pass
while True:
    c, _ = srv.accept()
    u = socket.socket(socket.AF_UNIX)
    try:
        u.connect("{SANDBOX_DIR}/proxy.sock")
    except OSError:
        c.close()
        continue
    threading.Thread(target=pipe, args=(c, u), daemon=True).start()
    threading.Thread(target=pipe, args=(u, c), daemon=True).start()
"""


def granted(grants: tuple[str, ...], host: str, port: int) -> bool:
    target = f"{host.lower()}:{port}"
    for pattern in grants:
        p = pattern.lower()
        if ":" not in p:
            if port in (80, 443) and fnmatch.fnmatchcase(host.lower(), p):
                return True
        elif fnmatch.fnmatchcase(target, p):
            return True
    return False


@dataclass
class EgressProxy:
    """A per-call proxy that lets a sandbox reach only granted hosts."""

    grants: tuple[str, ...]
    directory: Path
    attempts: list[str] = field(default_factory=list)
    """``"allowed host:port"`` / ``"denied host:port"`` in order."""
    _server: asyncio.AbstractServer | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        (self.directory / "forwarder.py").write_text(FORWARDER)
        self._server = await asyncio.start_unix_server(self._handle, path=str(self.directory / "proxy.sock"))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def report(self) -> str:
        return "".join(f"\nnetwork: {a}" for a in self.attempts)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > HEAD_LIMIT:
            return await _answer(writer, 431, "request head too large")
        line, _, rest = head.partition(b"\r\n")
        method, target, version = line.decode("latin-1").split(" ", 2)
        if method == "CONNECT":
            host, _, port_text = target.rpartition(":")
            port, forward = int(port_text), b""
        else:
            url = urlsplit(target)
            if url.scheme != "http" or not url.hostname:
                return await _answer(writer, 400, "only CONNECT and absolute http:// requests")
            host, port = url.hostname, url.port or 80
            path = (url.path or "/") + (f"?{url.query}" if url.query else "")
            forward = f"{method} {path} {version}\r\n".encode("latin-1") + rest
        host = host.strip("[]")
        if not granted(self.grants, host, port):
            self.attempts.append(f"denied {host}:{port} (no grant in the policy)")
            return await _answer(writer, 403, f"edgehub policy grants no access to {host}:{port}")
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError) as exc:
            self.attempts.append(
                f"allowed {host}:{port}, but it could not be reached ({exc.__class__.__name__})"
            )
            return await _answer(writer, 502, f"cannot reach {host}:{port}")
        self.attempts.append(f"allowed {host}:{port}")
        if method == "CONNECT":
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            up_writer.write(forward)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            if writer.can_write_eof():
                writer.write_eof()


async def _answer(writer: asyncio.StreamWriter, status: int, text: str) -> None:
    body = text.encode() + b"\n"
    reason = {400: "Bad Request", 403: "Forbidden", 431: "Too Large", 502: "Bad Gateway"}[status]
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    writer.write(head.encode() + body)
    await writer.drain()
