"""What crosses a wire: a packet capture (AF_PACKET, every interface of a network namespace) of TCP
payloads, for tests that must show traffic is encrypted on a LAN they built (``tests.harness.netns``).

``capture(prefix)`` starts the sniffer where ``prefix`` runs commands (``Lan.prefix(name)``); leaving
the ``with`` block stops it and fills the ``Capture`` with the payload bytes seen per TCP port.
"""

from __future__ import annotations

import base64
import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SNIFFER = r"""
import base64, json, signal, socket, struct, sys
out, ports = sys.argv[1], {}
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
sock.settimeout(0.2)
print("ready", flush=True)
while not stop:
    try:
        frame = sock.recv(65535)
    except (TimeoutError, InterruptedError):
        continue
    if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 6:  # IPv4, TCP
        continue
    ihl = (frame[14] & 0x0F) * 4
    total = struct.unpack("!H", frame[16:18])[0]
    tcp = 14 + ihl
    sport, dport = struct.unpack("!HH", frame[tcp:tcp + 4])
    payload = frame[tcp + (frame[tcp + 12] >> 4) * 4:14 + total]
    if payload:
        for port in (sport, dport):
            ports.setdefault(port, bytearray()).extend(payload)
with open(out, "w") as f:
    json.dump({str(p): base64.b64encode(bytes(b)).decode() for p, b in ports.items()}, f)
"""


@dataclass
class Capture:
    by_port: dict[int, bytes] = field(default_factory=dict)
    """TCP payload bytes seen to or from each port (both directions, in capture order)."""

    def on(self, port: int) -> bytes:
        return self.by_port.get(port, b"")

    def anywhere(self) -> bytes:
        return b"".join(self.by_port.values())


@contextlib.contextmanager
def capture(prefix: list[str]) -> Iterator[Capture]:
    found = Capture()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "capture.json"
        proc = subprocess.Popen(
            [*prefix, sys.executable, "-c", SNIFFER, str(out)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            proc.kill()
            raise AssertionError("the packet capture did not start (AF_PACKET needs root)")
        try:
            yield found
        finally:
            time.sleep(0.5)  # the last segments
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
            if out.exists():
                raw = json.loads(out.read_text())
                found.by_port.update({int(p): base64.b64decode(b) for p, b in raw.items()})
