"""Checkpoint and restore of the worker process with CRIU, spoken to over its RPC protocol (pycriu).

One ``criu swrk`` per request, started with ``subprocess`` (not pycriu's own ``fork()``, which would copy
the daemon's address space and run Python between fork and exec) and handed one end of a socketpair;
the request and reply are pycriu's ``rpc_pb2`` messages, sent here rather than by pycriu's client so a
CRIU that never answers times out instead of hanging the daemon. Restores use ``rst_sibling``: the
restored worker becomes a child of the daemon, which reaps it like the worker it started cold.

Layout of the snapshot folder: ``image/`` (CRIU's files, ``manifest.json``, ``dump.log``,
``restore.log``); a dump writes ``image.new/`` and renames it over ``image/`` only once it succeeded, so
a failed dump leaves the previous image as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .errors import SnapshotError, SnapshotRefused
from .manifest import Manifest

log = logging.getLogger("edgehub.edge.snapshot")
CRIU_LOG_LEVEL = 2
"""Errors and warnings in dump.log / restore.log; 4 for CRIU's debug output."""
DUMP_TIMEOUT_S = 60.0
RESTORE_TIMEOUT_S = 20.0
"""Both take well under a second; past these CRIU is stuck and is killed."""


def find_criu(override: Path | None = None) -> Path | None:
    """The CRIU binary: ``override``, else the one bootstrap links beside this Python, else PATH."""
    if override is not None:
        return override if os.access(override, os.X_OK) else None
    beside = Path(sys.executable).parent / "criu"
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("criu")
    return Path(found) if found else None


def criu_version(binary: Path) -> str:
    """``4.1.1`` from ``criu --version``; "" when it does not run."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return ""
    for line in out.stdout.splitlines():
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
    return ""


def pycriu_module() -> Any:
    """CRIU's Python bindings (bootstrap generates them; see scripts/criu.sh); SnapshotError if absent."""
    try:
        import pycriu
    except ImportError as exc:
        raise SnapshotError(f"pycriu is not importable ({exc}); run scripts/bootstrap.sh") from None
    return pycriu


class Criu:
    """One CRIU binary, driven over RPC."""

    def __init__(self, binary: Path) -> None:
        self.binary = binary
        self.pycriu = pycriu_module()
        self.version = criu_version(binary)

    def _request(
        self, kind: str, opts: Any, fds: tuple[int, ...], log_path: Path | None, timeout: float
    ) -> Any:
        """Send one request to a fresh ``criu swrk`` that inherits ``fds``; its reply. A CRIU that does
        not answer within ``timeout`` is killed (a damaged image can make a restore wait forever)."""
        rpc = self.pycriu.rpc
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = subprocess.Popen(
                [self.binary, "swrk", str(theirs.fileno())],
                pass_fds=(theirs.fileno(), *fds),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except OSError as exc:
            raise SnapshotError(f"cannot run {self.binary}: {exc.strerror}") from None
        finally:
            theirs.close()
        try:
            req = rpc.criu_req(type=getattr(rpc, kind))
            if opts is not None:
                req.opts.MergeFrom(opts)
            ours.settimeout(timeout)
            ours.send(req.SerializeToString())
            size = len(ours.recv(1, socket.MSG_TRUNC | socket.MSG_PEEK))
            resp = rpc.criu_resp()
            resp.ParseFromString(ours.recv(size))
        except TimeoutError:
            raise SnapshotError(f"criu {kind.lower()} did not answer in {timeout:.0f} s") from None
        except OSError as exc:
            raise SnapshotError(f"criu {kind.lower()} failed: {exc}") from None
        finally:
            ours.close()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if not resp.success:
            detail = f"errno {resp.cr_errno}" if resp.cr_errno else "no errno"
            raise SnapshotError(f"criu {kind.lower()} failed ({detail}){_log_tail(log_path)}")
        return resp

    def _opts(self, fd: int, log_file: str) -> Any:
        opts = self.pycriu.rpc.criu_opts(images_dir_fd=fd, log_file=log_file, log_level=CRIU_LOG_LEVEL)
        opts.shell_job = False
        return opts

    def dump(self, pid: int, images: Path) -> None:
        fd = os.open(images, os.O_DIRECTORY)
        try:
            opts = self._opts(fd, "dump.log")
            opts.pid, opts.leave_running = pid, False
            self._request("DUMP", opts, (fd,), images / "dump.log", DUMP_TIMEOUT_S)
        finally:
            os.close(fd)

    def restore(self, images: Path, pid: int) -> int:
        """Restore the tree in ``images`` (root ``pid``) as a child of this process; its pid."""
        fd = os.open(images, os.O_DIRECTORY)
        try:
            opts = self._opts(fd, "restore.log")
            opts.rst_sibling = True
            return int(
                self._request("RESTORE", opts, (fd,), images / "restore.log", RESTORE_TIMEOUT_S).restore.pid
            )
        except SnapshotError:
            _kill_child(pid)  # a half-restored worker is our child (rst_sibling): do not leave it behind
            raise
        finally:
            os.close(fd)


def _kill_child(pid: int) -> None:
    try:
        if int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) != os.getpid():
            return  # not ours: never kill a process that merely reuses the pid
    except (OSError, ValueError, IndexError):
        return
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _log_tail(path: Path | None, lines: int = 3) -> str:
    """The last errors CRIU logged (its RPC errors say little), for the operator's log."""
    if path is None:
        return ""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    errors = [ln.strip() for ln in text if "Error" in ln and "RLIMIT_NOFILE" not in ln]
    return f" ({' | '.join(errors[-lines:])})" if errors else ""


class Snapshots:
    """The snapshot folder of one worker: dump into it, restore from it, refuse what does not fit."""

    def __init__(self, folder: Path, criu: Criu) -> None:
        self.folder = folder
        self.criu = criu
        self.image = folder / "image"

    def manifest(self) -> Manifest | None:
        """The current image's manifest; None when there is no image; SnapshotRefused when unreadable."""
        path = self.image / "manifest.json"
        if not path.exists():
            return None
        try:
            return Manifest.from_json(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise SnapshotRefused(f"unreadable manifest {path}: {exc}") from None

    def dump(self, pid: int, manifest: Manifest) -> tuple[float, int]:
        """Checkpoint ``pid`` (CRIU kills it once dumped); seconds taken and image bytes."""
        new = self.folder / "image.new"
        shutil.rmtree(new, ignore_errors=True)
        new.mkdir(parents=True)
        started = time.perf_counter()
        self.criu.dump(pid, new)
        took = time.perf_counter() - started
        files = {p.name: p.stat().st_size for p in new.iterdir() if p.suffix == ".img"}
        (new / "manifest.json").write_text(dataclasses.replace(manifest, files=files).to_json())
        self.discard()
        new.rename(self.image)
        return took, image_bytes(self.image)

    def restore(self, here: Manifest) -> tuple[int, Manifest]:
        """Restore the image if its manifest fits ``here``; the restored pid and the image's manifest."""
        manifest = self.manifest()
        if manifest is None:
            raise SnapshotRefused(f"no image in {self.folder}")
        reason = manifest.refusal(here)
        if reason is not None:
            raise SnapshotRefused(reason)
        for name, size in manifest.files.items():
            path = self.image / name
            found = path.stat().st_size if path.exists() else -1
            if found != size:
                raise SnapshotRefused(f"image damaged: {name} is {found} bytes, was {size} when dumped")
        if _pid_taken(manifest.pid):
            raise SnapshotError(f"pid {manifest.pid}, which the image restores, belongs to another process")
        with contextlib.suppress(FileNotFoundError):  # the worker re-binds it; a stale name makes bind fail
            os.unlink(manifest.socket)
        return self.criu.restore(self.image, manifest.pid), manifest

    def discard(self) -> None:
        shutil.rmtree(self.image, ignore_errors=True)


def _pid_taken(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def image_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
