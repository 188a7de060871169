"""The footprint split (``edgehub.edge.footprint``): each mapping of /proc/PID/smaps goes to one part,
on written smaps text and on this very process's real mappings."""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
from pathlib import Path

from edgehub.edge.footprint import BUFFER_MIN, classify, measure, measure_daemon, total

KiB = 1024
MiB = 1 << 20


def _mapping(start: int, size: int, rss_kib: int, path: str = "") -> str:
    return (
        f"{start:x}-{start + size:x} rw-p 00000000 00:00 0          {path}\n"
        f"Size:           {size // KiB} kB\nRss:            {rss_kib} kB\nPss:            {rss_kib} kB\n"
    )


def test_each_mapping_goes_to_one_part() -> None:
    smaps = "".join(
        [
            _mapping(0x1000000, 300 * MiB, 200 * KiB, "/models/gemma.gguf"),
            _mapping(0x20000000, 64 * MiB, 40 * KiB),  # a KV cache
            _mapping(0x30000000, 1 * MiB, 1 * KiB),  # a Python arena
            _mapping(0x31000000, 60 * MiB, 30 * KiB, "[heap]"),
            _mapping(0x40000000, 90 * MiB, 20 * KiB, "/cache/all-MiniLM-L6-v2/model.safetensors"),
            _mapping(0x50000000, 5 * MiB, 3 * KiB, "/usr/lib/libpython3.11.so"),
        ]
    )
    f = classify(smaps, pid=7)
    assert (f.rss, f.model_file, f.model_buffers, f.embeddings) == (294 * MiB, 200 * MiB, 40 * MiB, 20 * MiB)
    assert f.python == 34 * MiB
    assert f.without_model == 54 * MiB


def test_large_buffers_count_as_the_models_only_in_a_process_with_a_model() -> None:
    f = classify(_mapping(0x20000000, 64 * MiB, 40 * KiB) + _mapping(0x30000000, MiB, KiB))
    assert f.model_buffers == 0
    assert f.python == 41 * MiB


def test_this_process_pages_of_a_mapped_gguf_and_its_large_buffers(tmp_path: Path) -> None:
    model = tmp_path / "tiny.gguf"
    model.write_bytes(os.urandom(4 * MiB))
    before = measure(os.getpid())
    with model.open("rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as weights:
        assert sum(weights[i] for i in range(0, len(weights), 4096)) >= 0  # touch every page
        buffer = mmap.mmap(-1, BUFFER_MIN + MiB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        buffer.write(b"x" * len(buffer))
        now = measure(os.getpid())
        buffer.close()
    # what this test mapped (in a full run the process may already hold a real model from other tests)
    assert now.model_file - before.model_file == 4 * MiB
    assert now.model_buffers - before.model_buffers >= BUFFER_MIN + MiB
    assert now.python > 0


def test_a_daemon_is_measured_with_its_workers_only() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        parts = measure_daemon(os.getpid())
    finally:
        child.kill()
        child.wait()
    assert [p.role for p in parts] == ["daemon"]  # a child that is not a model worker is not the daemon's
    assert total(parts).rss == parts[0].rss
