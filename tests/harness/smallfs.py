"""A small file system of its own for a test (we run as root): a size-limited tmpfs mounted on a
folder under the test's temp dir, unmounted in teardown. For disk-full tests: filling it affects
nothing else on the machine."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_fs(where: Path, size: str = "8m") -> Iterator[Path]:
    """A tmpfs of ``size`` on ``where`` (created), unmounted afterwards (lazily: a daemon that still
    holds a file open there must not make the teardown fail)."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs on {where} (tests run as root): {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(folder: Path, leave_bytes: int) -> Path:
    """Fill ``folder``'s file system with one file until ``leave_bytes`` are free; the file (delete it
    to give the space back)."""
    filler = folder / "filler"
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    with filler.open("ab") as out:
        out.write(b"\0" * max(0, free - leave_bytes))
        out.flush()
        os.fsync(out.fileno())
    return filler
