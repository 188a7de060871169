"""Per-call cgroups: memory and process-count limits that hold for a command and all its children.

Each sandboxed call gets its own cgroup under the daemon's (``edgehub-<id>``), is placed there before
``bwrap`` executes (so nothing it starts escapes the limit), and is emptied and removed afterwards.
This machine class mounts cgroup v1 ``memory`` and ``pids`` controllers; on cgroup v2 the daemon's
cgroup must be delegated with both controllers enabled in ``cgroup.subtree_control``.
When neither is writable, ``Cgroups.detect`` says why and the sandbox falls back to rlimits only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


def _own_paths() -> dict[str, str]:
    """controller -> this process's cgroup path (``""`` key: the v2 unified hierarchy)."""
    out: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                out[c] = path
    return out


@dataclass(frozen=True, slots=True)
class CallCgroup:
    """The cgroup(s) of one call."""

    dirs: tuple[Path, ...]
    procs_files: tuple[Path, ...]
    """``cgroup.procs`` files the child writes its pid to before exec."""
    memory_dir: Path
    v2: bool

    def oom_killed(self) -> bool:
        if self.v2:
            events = self.memory_dir / "memory.events"
            text = events.read_text() if events.exists() else ""
            return any(line.split()[0] == "oom_kill" and line.split()[1] != "0" for line in text.splitlines())
        control = self.memory_dir / "memory.oom_control"
        with contextlib.suppress(OSError):
            for line in control.read_text().splitlines():
                if line.startswith("oom_kill ") and line.split()[1] != "0":
                    return True
        with contextlib.suppress(OSError, ValueError):
            return int((self.memory_dir / "memory.failcnt").read_text()) > 0
        return False

    def pids_limit_hit(self) -> bool:
        for d in self.dirs:
            with contextlib.suppress(OSError):
                for line in (d / "pids.events").read_text().splitlines():
                    if line.startswith("max ") and line.split()[1] != "0":
                        return True
        return False

    def pids(self) -> set[int]:
        found: set[int] = set()
        for procs in self.procs_files:
            with contextlib.suppress(OSError):
                found.update(int(p) for p in procs.read_text().split())
        return found

    def destroy(self) -> None:
        """Kill whatever is left in the cgroup and remove it."""
        for _ in range(100):
            left = self.pids()
            if not left:
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for d in self.dirs:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # busy for a moment while the last killed process is reaped
                    os.sched_yield()


@dataclass(frozen=True, slots=True)
class Cgroups:
    """Where per-call cgroups are created."""

    memory: Path
    pids: Path
    v2: bool

    @classmethod
    def detect(cls) -> tuple[Cgroups | None, str]:
        """The usable cgroup parents, or None and the reason."""
        own = _own_paths()
        if "memory" in own and "pids" in own:
            memory = ROOT / "memory" / own["memory"].lstrip("/")
            pids = ROOT / "pids" / own["pids"].lstrip("/")
            if all(os.access(p, os.W_OK) for p in (memory, pids)):
                return cls(memory, pids, v2=False), ""
            return None, f"cgroup v1 directories {memory} and {pids} are not writable"
        if "" in own and (ROOT / "cgroup.controllers").exists():
            base = ROOT / own[""].lstrip("/")
            enabled = (base / "cgroup.subtree_control").read_text().split() if base.exists() else []
            if {"memory", "pids"} <= set(enabled) and os.access(base, os.W_OK):
                return cls(base, base, v2=True), ""
            return None, f"cgroup v2 at {base} does not delegate the memory and pids controllers"
        return None, "no cgroup memory/pids controller is mounted"

    def create(self, *, memory_bytes: int, max_pids: int) -> CallCgroup:
        name = f"edgehub-{uuid.uuid4().hex[:12]}"
        if self.v2:
            d = self.memory / name
            d.mkdir()
            (d / "memory.max").write_text(str(memory_bytes))
            with contextlib.suppress(OSError):
                (d / "memory.swap.max").write_text("0")
            (d / "pids.max").write_text(str(max_pids))
            return CallCgroup((d,), (d / "cgroup.procs",), d, v2=True)
        mem, pid = self.memory / name, self.pids / name
        mem.mkdir()
        try:
            (mem / "memory.limit_in_bytes").write_text(str(memory_bytes))
            with contextlib.suppress(OSError):  # absent without swap accounting
                (mem / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
            pid.mkdir()
            (pid / "pids.max").write_text(str(max_pids))
        except BaseException:
            CallCgroup((pid, mem), (), mem, v2=False).destroy()
            raise
        return CallCgroup((pid, mem), (mem / "cgroup.procs", pid / "cgroup.procs"), mem, v2=False)
