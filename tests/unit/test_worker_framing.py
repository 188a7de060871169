"""The worker link's frames: round trips, and a clear FrameError (never a hang) for bad input."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
from collections.abc import Iterator

import pytest

from edgehub.edge.worker.server import MAX_MESSAGE, FrameError, recv_msg, send_msg


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    b.settimeout(2)
    yield a, b
    a.close()
    b.close()


def test_a_message_round_trips_with_unicode_and_nesting(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    msg = {"op": "complete", "prompt": "Grüße ✓\n" * 100, "json_schema": {"type": "object"}, "n": 3}
    send_msg(a, msg)
    send_msg(a, {"op": "hello"})
    assert recv_msg(b) == msg
    assert recv_msg(b) == {"op": "hello"}


def test_an_oversized_length_is_refused_before_reading_the_body(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    a.sendall(struct.pack(">I", MAX_MESSAGE + 1))
    with pytest.raises(FrameError, match="exceeds the limit"):
        recv_msg(b)


def test_sending_an_oversized_message_fails_without_writing(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    with pytest.raises(FrameError, match="exceeds the limit"):
        send_msg(a, {"prompt": "x" * (MAX_MESSAGE + 1)})
    b.setblocking(False)
    with pytest.raises(BlockingIOError):
        b.recv(1)


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"\x00\x00", "while reading the frame header"),
        (struct.pack(">I", 10) + b"abc", "after 3 of 10 bytes"),
        (struct.pack(">I", 3) + b"\xff\xfe\x00", "not JSON"),
        (struct.pack(">I", 7) + b"not json", "not JSON"),
        (struct.pack(">I", 2) + b"[]", "expected an object"),
    ],
)
def test_truncated_or_malformed_frames_raise_a_clear_error(
    pair: tuple[socket.socket, socket.socket], raw: bytes, error: str
) -> None:
    a, b = pair
    a.sendall(raw)
    a.shutdown(socket.SHUT_WR)
    with pytest.raises(FrameError, match=error):
        recv_msg(b)


def test_a_silent_peer_times_out_instead_of_hanging(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.sendall(struct.pack(">I", 10))
    b.settimeout(0.1)
    with pytest.raises(FrameError, match="timed out reading the frame body"):
        recv_msg(b)


def test_the_worker_script_loads_without_the_edgehub_edge_package() -> None:
    """The worker runs ``server.py`` by path (``python -P``): a package-relative import there would
    kill every worker at start."""
    from edgehub.edge.worker import server

    code = "import runpy, sys; runpy.run_path(sys.argv[1]); assert 'edgehub.edge' not in sys.modules"
    done = subprocess.run(
        [sys.executable, "-P", "-c", code, server.__file__], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
