"""Several "hosts" on this machine: network namespaces on one LAN, for tests that need devices on a
network of their own (migration between devices, partitions).

``lan(["hub", "a", "b"])`` creates a namespace per name and a bridge inside the first one (the
hub's): each other namespace gets a veth pair whose far end is on that bridge. Addresses are
10.77.N.1, .2, ... in a subnet of the test's own (N random), so only the test's namespaces have them
and the machine's own namespace is untouched (PLATFORM.md). ``Lan.cut(name)`` takes a host's link down
(a partition), ``Lan.heal(name)`` brings it back. Everything is removed on exit.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field


def _ip(*args: str, netns: str = "") -> None:
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")


@dataclass
class Lan:
    tag: str
    subnet: int
    names: list[str]
    netns: dict[str, str] = field(default_factory=dict)
    """name -> namespace"""
    addr: dict[str, str] = field(default_factory=dict)
    """name -> its IP on the LAN"""

    def prefix(self, name: str) -> list[str]:
        """A command prefix that runs a command in ``name``'s namespace."""
        return ["ip", "netns", "exec", self.netns[name]]

    def _link(self, name: str) -> str:
        return f"{self.tag}{self.names.index(name)}"

    def cut(self, name: str) -> None:
        """Partition ``name`` from the LAN (its bridge port goes down)."""
        _ip("link", "set", self._link(name), "down", netns=self.netns[self.names[0]])

    def heal(self, name: str) -> None:
        _ip("link", "set", self._link(name), "up", netns=self.netns[self.names[0]])


@contextlib.contextmanager
def lan(names: list[str]) -> Iterator[Lan]:
    tag = f"eh{os.getpid() % 10000:04d}{random.randrange(100):02d}"  # interface names: <= 15 chars
    net = Lan(tag, random.randrange(1, 250), names)
    try:
        for i, name in enumerate(names):
            ns = f"{tag}-{name}"
            _ip("netns", "add", ns)
            net.netns[name] = ns
            net.addr[name] = f"10.77.{net.subnet}.{i + 1}"
            _ip("link", "set", "lo", "up", netns=ns)
        hub = net.netns[names[0]]
        bridge = f"{tag}br"
        _ip("link", "add", bridge, "type", "bridge", netns=hub)
        _ip("addr", "add", f"{net.addr[names[0]]}/24", "dev", bridge, netns=hub)
        _ip("link", "set", bridge, "up", netns=hub)
        for i, name in enumerate(names[1:], start=1):
            port, far = f"{tag}{i}", f"{tag}p{i}"
            _ip("link", "add", port, "type", "veth", "peer", "name", far, netns=hub)
            _ip("link", "set", far, "netns", net.netns[name], netns=hub)
            _ip("link", "set", port, "master", bridge, netns=hub)
            _ip("link", "set", port, "up", netns=hub)
            _ip("addr", "add", f"{net.addr[name]}/24", "dev", far, netns=net.netns[name])
            _ip("link", "set", far, "up", netns=net.netns[name])
        yield net
    finally:
        for ns in net.netns.values():  # deleting a namespace deletes its links (and their peers)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
