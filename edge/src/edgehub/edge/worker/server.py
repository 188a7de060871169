"""The warm worker process (a ``LlamaBrain`` behind a Unix socket) and the framing both ends speak.

Run by path, not with ``-m``: ``python .../worker/server.py SOCKET SETTINGS_JSON``. Importing
``edgehub.edge`` would load the whole daemon (1 s and ~50 MB of heap that every snapshot image would
carry), so this module imports only the standard library and ``edgehub.llm``, and the daemon side
(``client.py``) imports its framing from here.

Why a listening socket and not a pipe: CRIU refuses to dump a process connected to something outside
the dumped tree, and a pipe to the daemon would be exactly that. The daemon connects, asks, and before a
checkpoint asks the worker to ``park``: the worker trims its heap, answers, closes the connection and
waits in ``accept()`` with nothing open but the listening socket, which CRIU dumps and re-binds.

Frames: a 4-byte big-endian length, then that many bytes of UTF-8 JSON (one object). A length over
``MAX_MESSAGE`` or a connection that closes mid-frame raises ``FrameError`` at once, never a hang.
Requests are ``{"op": ...}``; replies ``{"ok": true, ...}`` or ``{"ok": false, "kind", "error"}``.
JSON, not protobuf: this is a private link between the daemon and its own child, never a wire between
machines, and it carries prompts as text.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import logging
import os
import socket
import struct
import sys
from dataclasses import asdict, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # this file runs as a script in the worker (python -P server.py): no package imports
    from edgehub.edge.jsontypes import JsonObject

HEADER = struct.Struct(">I")
MAX_MESSAGE = 16 << 20
"""Largest frame either end accepts: a prompt fills at most n_ctx tokens, far below this."""
PROTOCOL = 1
"""Version of the requests and replies below; the daemon refuses a worker that speaks another."""


class FrameError(Exception):
    """A frame could not be read or written: oversized, truncated, not JSON, or the peer is gone."""


def number(msg: JsonObject, key: str, default: float | None = None) -> float:
    """The numeric field ``key`` of a frame (``default`` when absent); FrameError when it is not a number."""
    value = msg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FrameError(f"field {key!r} is {value!r}, not a number")
    return value


def send_msg(sock: socket.socket, msg: JsonObject) -> None:
    body = json.dumps(msg, separators=(",", ":")).encode()
    if len(body) > MAX_MESSAGE:
        raise FrameError(f"message of {len(body)} bytes exceeds the limit of {MAX_MESSAGE}")
    try:
        sock.sendall(HEADER.pack(len(body)) + body)
    except OSError as exc:
        raise FrameError(f"peer gone while sending ({exc})") from None


def _read_exact(sock: socket.socket, n: int, what: str) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = sock.recv(min(n - len(buf), 1 << 20))
        except TimeoutError:
            raise FrameError(f"timed out reading the {what}") from None
        except OSError as exc:
            raise FrameError(f"peer gone while reading the {what} ({exc})") from None
        if not chunk:
            got = f" after {len(buf)} of {n} bytes" if buf else ""
            raise FrameError(f"connection closed while reading the {what}{got}")
        buf += chunk
    return bytes(buf)


def recv_msg(sock: socket.socket) -> JsonObject:
    """The next frame as a JSON object; FrameError when it is oversized, truncated or not an object."""
    (size,) = HEADER.unpack(_read_exact(sock, HEADER.size, "frame header"))
    if size > MAX_MESSAGE:
        raise FrameError(f"frame of {size} bytes exceeds the limit of {MAX_MESSAGE}")
    body = _read_exact(sock, size, "frame body")
    try:
        msg = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FrameError(f"frame is not JSON ({exc})") from None
    if not isinstance(msg, dict):
        raise FrameError(f"frame is a JSON {type(msg).__name__}, expected an object")
    return msg


def trim_heap() -> None:
    """Shrink what a checkpoint copies: free Python garbage and hand malloc's free pages back."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


MADV_DONTNEED = 4
PAGE = 4096
ZERO_SCAN_MIN = 9 << 20
"""Only mappings larger than a thread stack (8 MB) are scanned: llama.cpp's KV cache and compute
buffers, which it zero-fills or touches in full and which nothing writes to while the worker is parked."""


def drop_zero_pages() -> int:
    """Release all-zero pages of large private anonymous mappings; bytes released.

    llama.cpp zero-fills the whole KV cache (n_ctx positions) up front, and CRIU copies every resident
    page, zero or not: with a short prompt most of a 2048-token cache is zeros in the image. Dropping a
    zero page of a private anonymous mapping changes nothing the process can observe (the next read
    gets a zero page again), so the dump skips it. The heap and the pymalloc arenas are left alone:
    this code allocates there while it scans.
    """
    import numpy as np

    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    with open("/proc/self/maps") as f:
        regions = [line.split() for line in f]
    released = 0
    for parts in regions:
        start, end = (int(x, 16) for x in parts[0].split("-"))
        if len(parts) != 5 or parts[1] != "rw-p" or end - start < ZERO_SCAN_MIN:
            continue
        pages = np.frombuffer(
            memoryview((ctypes.c_uint64 * ((end - start) // 8)).from_address(start)), np.uint64
        )
        zero = ~pages.reshape(-1, PAGE // 8).any(axis=1)
        # runs of zero pages: [first, last) page indexes
        edges = np.flatnonzero(np.diff(np.concatenate(([0], zero.view(np.int8), [0]))))
        for first, last in edges.reshape(-1, 2):
            libc.madvise(start + int(first) * PAGE, int(last - first) * PAGE, MADV_DONTNEED)
            released += int(last - first) * PAGE
    return released


class Worker:
    """The serving loop: one connection at a time, one request at a time."""

    def __init__(self, brain: Any) -> None:
        self.brain = brain

    def hello(self) -> JsonObject:
        return {
            "protocol": PROTOCOL,
            "pid": os.getpid(),
            "n_ctx": self.brain.n_ctx,
            "fingerprint": self.brain.fingerprint,
            "cached_tokens": len(self.brain._tokens),
        }

    def handle(self, msg: JsonObject) -> JsonObject:
        op = msg.get("op")
        if op == "hello":
            return self.hello()
        if op == "complete":
            out = self.brain.complete(
                str(msg["prompt"]),
                json_schema=msg.get("json_schema"),
                max_tokens=int(number(msg, "max_tokens", 256)),
                stop=msg.get("stop"),
                special=bool(msg.get("special", False)),
            )
            return asdict(out)
        if op == "count_tokens":
            return {"tokens": self.brain.count_tokens(str(msg["text"]))}
        if op == "park":
            trim_heap()
            released = drop_zero_pages() if msg.get("drop_zero_pages", True) else 0
            return {"cached_tokens": len(self.brain._tokens), "released": released}
        raise ValueError(f"unknown op {op!r}")

    def serve(self, listener: socket.socket) -> None:
        while True:
            conn, _ = listener.accept()
            with conn:
                self._serve_connection(conn)

    def _serve_connection(self, conn: socket.socket) -> None:
        while True:
            try:
                msg = recv_msg(conn)
            except FrameError:
                return  # the daemon went away or sent garbage: wait for the next connection
            op = msg.get("op")
            if op == "exit":
                send_msg(conn, {"ok": True})
                sys.exit(0)
            try:
                reply = {"ok": True, **self.handle(msg)}
            except Exception as exc:  # the daemon gets the error; the worker keeps serving
                reply = {"ok": False, "kind": type(exc).__name__, "error": str(exc)}
            try:
                send_msg(conn, reply)
            except FrameError:
                return
            if op == "park":
                return  # closing here leaves the process with no connection for CRIU to refuse


def _settings(raw: str) -> Any:
    from pathlib import Path

    from edgehub.llm import LlamaSettings

    data = json.loads(raw)
    known = {f.name for f in fields(LlamaSettings)}
    data = {k: v for k, v in data.items() if k in known}
    if data.get("path") is not None:
        data["path"] = Path(data["path"])
    return LlamaSettings(**data)


def main(argv: list[str]) -> int:
    """``server.py SOCKET SETTINGS_JSON``: load the model, listen, serve until told to exit."""
    path, raw = argv
    from edgehub.llm import logs
    from edgehub.llm.llama import LlamaBrain

    logs.show(logging.WARNING)  # into worker.log, whose last lines a failed start reports
    brain = LlamaBrain.open(_settings(raw))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if os.path.exists(path):
        os.unlink(path)
    listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen(1)
    # From here on nothing may hold the start-up log open: CRIU re-opens regular files on restore and
    # refuses one whose size changed since the dump.
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    trim_heap()
    Worker(brain).serve(listener)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
