"""What the daemon keeps in its data dir beside the store: the lock that makes it the only daemon
there, and the marker of a drain the hub ordered (a file, so a restart keeps draining)."""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from edgehub.protocol.ids import check_sha256

from .errors import EdgeError

log = logging.getLogger("edgehub.edge")


MODELS_DIR = "models"
"""Models the hub sent (issue 21), each kept only once its SHA-256 was verified."""


def model_path(data_dir: Path, sha256: str) -> Path:
    """Where a verified model named by ``sha256`` lives: ``<data_dir>/models/<sha256>.gguf``."""
    return data_dir / MODELS_DIR / f"{check_sha256(sha256)}.gguf"


class DaemonLock:
    """One daemon per data dir: an exclusive flock on ``<data_dir>/edge.lock``."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "edge.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock (writing this process's pid into it); ``EdgeError`` when a daemon holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise EdgeError(f"another edge daemon is running on {self.path.parent}") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        """Let the lock go (a no-op when not held)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @staticmethod
    def held(data_dir: Path) -> bool:
        """True when a daemon holds the lock of ``data_dir``."""
        path = data_dir / "edge.lock"
        if not path.exists():
            return False
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False


class DrainFlag:
    """Drained by the hub: running agents finish, new ones (started or migrated in) are refused.
    Kept as ``<data_dir>/draining`` (holding the reason) so it outlives a restart."""

    def __init__(self, data_dir: Path, device_id: str) -> None:
        self.path = data_dir / "draining"
        self.device_id = device_id

    @property
    def on(self) -> bool:
        """The device is draining."""
        return self.path.exists()

    def set(self, on: bool, reason: str) -> None:
        """Drain (``on``) or resume, saying why in the log."""
        if on:
            self.path.write_text(reason + "\n")
        else:
            self.path.unlink(missing_ok=True)
        log.warning("device %s %s: %s", self.device_id, "draining" if on else "resumed", reason)
