"""How much memory the edge daemon holds, and for what: read from ``/proc/PID/smaps`` of the daemon and
of each model worker it runs (``worker/``), each process apart and in total.

Every mapping's resident size (Rss) goes to one part:
  model file     file-backed mappings of a ``.gguf``: llama.cpp maps the weights read-only from the
                 file; these pages are shared with the page cache and the kernel may reclaim them.
  model buffers  anonymous mappings of ``BUFFER_MIN`` or more (not the brk heap, not a stack) in a
                 process that maps a model: llama.cpp's KV cache and compute buffers, llama-cpp-python's
                 logits array, and the malloc arenas of the threads that load and run the model
                 (glibc gives each thread up to 64 MiB heaps of their own): llama.cpp's vocabulary
                 (~45 MiB for Gemma's 262k tokens) and the sampler's per-token arrays live there.
  embeddings     file-backed mappings of the L3 embedding model's files (``.safetensors``).
  python         the rest: the interpreter, its objects (1 MiB arenas), the main thread's heap and the
                 libraries' code and data.
The split is by mapping, so it is an attribution, not an exact accounting: a large buffer some other
library allocates in a worker thread of a model's process counts as a model buffer.
``bench/footprint`` shows it beside a plain llama-cpp-python process holding the same model (loaded in
a thread, as the daemon does), split the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

BUFFER_MIN = 8 << 20
"""Anonymous mappings at least this large count as model buffers (Python's arenas are 1 MiB; glibc
serves allocations over its mmap threshold, at most 32 MiB, with mappings of their own)."""
MODEL_SUFFIX = ".gguf"
EMBEDDING_SUFFIX = ".safetensors"
_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$")


@dataclass(frozen=True, slots=True)
class Footprint:
    """One process's resident memory, by part (bytes)."""

    pid: int
    role: str
    """``daemon`` or ``worker`` (a model worker the daemon started)."""
    rss: int
    model_file: int
    """Resident pages of the mapped model file."""
    model_buffers: int
    """KV cache, compute buffers and logits: the large anonymous mappings of a process with a model."""
    embeddings: int
    """Resident pages of the embedding model's mapped weights."""

    @property
    def python(self) -> int:
        """Everything else: the interpreter, its heap, libraries."""
        return self.rss - self.model_file - self.model_buffers - self.embeddings

    @property
    def without_model(self) -> int:
        """Resident memory besides the model's own pages and buffers (what the daemon itself costs)."""
        return self.rss - self.model_file - self.model_buffers

    def __add__(self, other: Footprint) -> Footprint:
        return Footprint(
            pid=self.pid,
            role="total",
            rss=self.rss + other.rss,
            model_file=self.model_file + other.model_file,
            model_buffers=self.model_buffers + other.model_buffers,
            embeddings=self.embeddings + other.embeddings,
        )


@dataclass(slots=True)
class _Mapping:
    size: int
    path: str
    rss: int = 0


def _mappings(smaps: str) -> list[_Mapping]:
    out: list[_Mapping] = []
    for line in smaps.splitlines():
        header = _HEADER.match(line)
        if header is not None:
            start, end, path = header.groups()
            out.append(_Mapping(int(end, 16) - int(start, 16), path.strip()))
        elif line.startswith("Rss:") and out:
            out[-1].rss = int(line.split()[1]) * 1024
    return out


def classify(smaps: str, *, pid: int = 0, role: str = "daemon") -> Footprint:
    """The footprint of one process from the text of its ``/proc/PID/smaps``."""
    maps = _mappings(smaps)
    has_model = any(m.path.endswith(MODEL_SUFFIX) for m in maps)
    model_file = sum(m.rss for m in maps if m.path.endswith(MODEL_SUFFIX))
    embeddings = sum(m.rss for m in maps if m.path.endswith(EMBEDDING_SUFFIX))
    buffers = sum(m.rss for m in maps if has_model and _is_buffer(m))
    return Footprint(pid, role, sum(m.rss for m in maps), model_file, buffers, embeddings)


def _is_buffer(m: _Mapping) -> bool:
    anonymous = m.path == "" or m.path.startswith("[anon")
    return anonymous and m.size >= BUFFER_MIN


def measure(pid: int, role: str = "daemon") -> Footprint:
    """The footprint of process ``pid`` now (``OSError`` when it is gone or not readable)."""
    return classify(Path(f"/proc/{pid}/smaps").read_text(), pid=pid, role=role)


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (every thread's), oldest first."""
    found: list[int] = []
    for task in sorted(Path(f"/proc/{pid}/task").iterdir(), key=lambda p: int(p.name)):
        try:
            found.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:  # the thread ended meanwhile
            continue
    return found


def _is_worker(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(arg.endswith(b"worker/server.py") for arg in argv)


def measure_daemon(pid: int) -> list[Footprint]:
    """The daemon ``pid`` and each model worker it runs (``role="worker"``), each apart; ``total``
    adds them up."""
    found = [measure(pid)]
    for child in children(pid):
        if _is_worker(child):
            try:
                found.append(measure(child, "worker"))
            except OSError:  # the worker ended (checkpointed) meanwhile
                continue
    return found


def total(parts: list[Footprint]) -> Footprint:
    """The sum of ``measure_daemon``'s processes (``role="total"``, the daemon's pid)."""
    out = parts[0]
    for more in parts[1:]:
        out = out + more
    return Footprint(out.pid, "total", out.rss, out.model_file, out.model_buffers, out.embeddings)
