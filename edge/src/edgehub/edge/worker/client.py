"""``WorkerBrain``: the ``Brain`` protocol served by a warm worker process that can sleep in a snapshot.

The daemon keeps the protocol's cheap parts at home (``n_ctx``, ``fingerprint``, and ``count_tokens``
on a vocabulary-only llama.cpp handle, so counting never waits for a decoding call or wakes a sleeping
worker) and forwards ``complete`` to the worker. ``checkpoint()`` parks the worker and dumps it with
CRIU (the process is gone and its memory freed); the next ``complete`` restores it. Every way a restore
can fail (no image, a manifest that does not fit, CRIU's error, a restored worker that does not answer
as the one dumped) ends in a cold start, logged with the reason: the snapshot is an accelerator, never
the source of truth. Thread-safe: calls are serialised by one lock (the daemon's ModelGate already does
this for ``complete``; the idle checkpointer is the other caller).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edgehub.llm import ChatFormat, Completion, LlamaSettings, check_model_file
from edgehub.llm.chat import chat_format_of
from edgehub.sync.server import die_with_parent

from ..jsontypes import JsonObject
from . import server
from .errors import SnapshotError, SnapshotRefused, WorkerError
from .manifest import Manifest, machine
from .snapshots import Snapshots

log = logging.getLogger("edgehub.edge.worker")
START_TIMEOUT_S = 120.0
CALL_TIMEOUT_S = 600.0
"""A single ``complete`` may take this long (a full context on a slow board) before the worker is
declared hung."""
SUN_PATH_MAX = 107


class _Child:
    """A worker process of ours: started cold (Popen) or restored by CRIU (a bare pid, our child too)."""

    def __init__(self, pid: int, popen: subprocess.Popen[bytes] | None = None) -> None:
        self.pid = pid
        self.popen = popen
        self.status: int | None = None

    def alive(self) -> bool:
        if self.status is not None:
            return False
        if self.popen is not None:
            self.status = self.popen.poll()
            return self.status is None
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            self.status = -1
            return False
        if pid == 0:
            return True
        self.status = os.waitstatus_to_exitcode(status)
        return False

    def reap(self, timeout: float = 5.0) -> None:
        """Wait for the exit (CRIU kills a dumped worker); SIGKILL after ``timeout``. Reaping matters:
        a restore needs the pid free, and a zombie still holds it."""
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                deadline = time.monotonic() + 60
            time.sleep(0.002)

    def stop(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
        self.reap(timeout=3.0)


def socket_path(folder: Path) -> Path:
    """``worker.sock`` in ``folder``, or a short name in /tmp when that path is too long for a socket."""
    path = folder / "worker.sock"
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        return path
    import hashlib

    return Path("/tmp") / f"edgehub-worker-{hashlib.sha256(os.fsencode(folder)).hexdigest()[:16]}.sock"


def settings_dict(settings: LlamaSettings, model: Path) -> JsonObject:
    data = asdict(settings)
    data["path"] = str(model)
    return data


def _completion(reply: JsonObject) -> Completion:
    """The ``Completion`` in a worker's reply; FrameError when a field is missing or mistyped."""
    ints = {
        f: int(server.number(reply, f)) for f in ("prompt_tokens", "evaluated_tokens", "completion_tokens")
    }
    text, stop_reason = reply.get("text"), reply.get("stop_reason")
    if not isinstance(text, str) or not isinstance(stop_reason, str):
        raise server.FrameError(f"not a completion: text {text!r}, stop_reason {stop_reason!r}")
    confidence = reply.get("confidence")  # absent from an older worker's reply, null when not measured
    return Completion(
        text=text,
        eval_ms=server.number(reply, "eval_ms"),
        decode_ms=server.number(reply, "decode_ms"),
        stop_reason=stop_reason,
        confidence=None if confidence is None else server.number(reply, "confidence"),
        **ints,
    )


class WorkerBrain:
    """A ``Brain`` whose model lives in a worker process; see the module docstring."""

    def __init__(self, settings: LlamaSettings, *, folder: Path, snapshots: Snapshots | None = None) -> None:
        self.model_path = check_model_file(settings)
        self.settings = settings
        self.folder = folder
        self.snapshots = snapshots
        self.socket = socket_path(folder)
        self._settings = settings_dict(settings, self.model_path)
        from edgehub.llm.llama import _fingerprint

        self._fingerprint = _fingerprint(self.model_path, settings.n_ctx)
        self._n_ctx = settings.n_ctx
        self._lock = threading.RLock()
        self._child: _Child | None = None
        self._sock: socket.socket | None = None
        self._vocab: Any = None
        self.busy = 0
        """Calls of ``complete`` in progress or waiting (the idle checkpointer leaves a busy worker be)."""
        self.last_used = time.monotonic()
        """When ``complete`` last returned (monotonic): the idle checkpointer's clock."""
        self.park_options: JsonObject = {}
        """Extra fields of the ``park`` request (``drop_zero_pages``: False to keep them; benchmarks)."""
        self.last_restore_s = 0.0
        """Seconds CRIU's last restore took (not counting the reconnect)."""
        self.wakes: list[str] = []
        """How each worker came up, in order: "cold", "restored", or "cold (reason)" after a failed
        restore. For tests, the benchmark and ``doctor``."""

    @classmethod
    def open(
        cls, settings: LlamaSettings, *, folder: Path, snapshots: Snapshots | None = None
    ) -> WorkerBrain:
        """Bring a worker up: restored from ``snapshots``' image when it fits, else started cold."""
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        brain = cls(settings, folder=folder, snapshots=snapshots)
        try:
            with brain._lock:
                brain._wake()
        except BaseException:
            brain.close()
            raise
        return brain

    # --- the Brain protocol ------------------------------------------------------------------------
    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def _vocabulary(self) -> Any:
        if self._vocab is None:
            from llama_cpp import Llama

            from edgehub.llm import logs

            logs.install()
            self._vocab = Llama(model_path=str(self.model_path), vocab_only=True, verbose=False)
        return self._vocab

    @functools.cached_property
    def chat_format(self) -> ChatFormat | None:
        return chat_format_of(self._vocabulary())

    def count_tokens(self, text: str) -> int:
        return len(self._vocabulary().tokenize(text.encode(), add_bos=False, special=False))

    def complete(
        self,
        prompt: str,
        *,
        json_schema: JsonObject | None = None,
        max_tokens: int = 256,
        stop: list[str] | None = None,
        special: bool = False,
    ) -> Completion:
        msg: JsonObject = {
            "op": "complete",
            "prompt": prompt,
            "json_schema": json_schema,
            "max_tokens": max_tokens,
        }
        if stop:
            msg["stop"] = [*stop]
        if special:
            msg["special"] = True
        self.busy += 1
        try:
            with self._lock:
                self._wake()
                reply = self._call(msg, timeout=CALL_TIMEOUT_S)
        finally:
            self.last_used = time.monotonic()
            self.busy -= 1
        return _completion(reply)

    def close(self) -> None:
        """Stop the worker (an image on disk stays for the next start)."""
        with self._lock:
            self._disconnect()
            if self._child is not None:
                self._child.stop()
                self._child = None
            if self._vocab is not None:
                self._vocab.close()
                self._vocab = None

    def kill_worker(self) -> None:
        """Stop the worker without a checkpoint; the next call restores the last image or starts cold."""
        with self._lock:
            self._abandon()

    # --- sleep and wake ----------------------------------------------------------------------------
    @property
    def awake(self) -> bool:
        child = self._child  # read once: the checkpointing thread may clear it meanwhile
        return child is not None and child.alive()

    def checkpoint(self, *, idle_s: float = 0.0) -> bool:
        """Dump the worker if it has been idle ``idle_s`` (and snapshots are on); True when it sleeps.

        A failed dump leaves the worker running (CRIU resumes it) and is logged, not raised."""
        with self._lock:
            if self.snapshots is None or not self.awake or time.monotonic() - self.last_used < idle_s:
                return False
            child = self._child
            assert child is not None
            parked = self._call({"op": "park", **self.park_options}, timeout=30)
            cached = int(server.number(parked, "cached_tokens"))
            self._wait_closed()
            manifest = self._here(pid=child.pid, cached_tokens=cached)
            try:
                took, size = self.snapshots.dump(child.pid, manifest)
            except (SnapshotError, OSError) as exc:
                log.warning("worker %d not checkpointed, it keeps running: %s", child.pid, exc)
                self.last_used = time.monotonic()  # try again after another idle period, not at once
                if child.alive():
                    self._connect(child)
                return False
            child.reap()
            self._child = None
            log.info("worker %d checkpointed in %.0f ms (%.1f MB image)", child.pid, took * 1000, size / 1e6)
            return True

    def _here(self, *, pid: int = 0, cached_tokens: int = 0) -> Manifest:
        assert self.snapshots is not None
        here = machine(
            criu_version=self.snapshots.criu.version, model=self.fingerprint, settings=self._settings
        )
        return Manifest(
            **{**asdict(here), "pid": pid, "socket": str(self.socket), "cached_tokens": cached_tokens}
        )

    def _wake(self) -> None:
        if self._child is not None and self._sock is not None and self._child.alive():
            return
        self._disconnect()
        if self._child is not None:  # died (a crash, a kill): a new one, cold
            log.warning("worker %d exited (%s); starting a new one", self._child.pid, self._child.status)
            self._child.stop()
            self._child = None
        reason = self._try_restore()
        if reason is None:
            return
        self._cold_start()
        self.wakes.append("cold" if reason == "" else f"cold ({reason})")

    def _try_restore(self) -> str | None:
        """None when restored; else why not ("" when snapshots are off or there is no image)."""
        if self.snapshots is None:
            return ""
        try:
            if self.snapshots.manifest() is None:
                return ""
            started = time.perf_counter()
            pid, manifest = self.snapshots.restore(self._here())
            self.last_restore_s = time.perf_counter() - started
            self._child = _Child(pid)
            self._connect(self._child, timeout=10.0, expect=manifest)
        except SnapshotRefused as exc:
            log.warning("snapshot refused, starting the worker cold: %s", exc.reason)
            self.snapshots.discard()  # it will never fit: the next checkpoint writes a new one
            self._abandon()
            return exc.reason
        except (SnapshotError, WorkerError, OSError) as exc:
            log.warning("restore failed, starting the worker cold: %s", exc)
            self._abandon()
            return str(exc)
        log.info("worker %d restored in %.0f ms", pid, (time.perf_counter() - started) * 1000)
        self.wakes.append("restored")
        return None

    def _abandon(self) -> None:
        self._disconnect()
        if self._child is not None:
            self._child.stop()
            self._child = None

    def _cold_start(self) -> None:
        log_path = self.folder / "worker.log"
        cmd = [
            *die_with_parent(),
            sys.executable,
            "-P",  # the worker folder must not shadow anything on sys.path
            server.__file__,
            str(self.socket),
            json.dumps(self._settings),
        ]
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                cmd, cwd="/", stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )
        self._child = _Child(proc.pid, proc)
        self._connect(self._child, timeout=START_TIMEOUT_S)

    def _connect(self, child: _Child, *, timeout: float = 10.0, expect: Manifest | None = None) -> None:
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self.socket))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
            if not child.alive():
                raise WorkerError(f"worker exited ({child.status}) before listening{self._log_tail()}")
            if time.monotonic() > deadline:
                raise WorkerError(f"worker {child.pid} did not listen on {self.socket} in {timeout:.0f} s")
            time.sleep(0.002)
        self._sock = sock
        hello = self._call({"op": "hello"}, timeout=timeout)
        if hello.get("protocol") != server.PROTOCOL or hello.get("fingerprint") != self.fingerprint:
            raise WorkerError(f"worker {child.pid} is not this model's worker: {hello}")
        if expect is not None and (hello["pid"], hello["cached_tokens"]) != (
            expect.pid,
            expect.cached_tokens,
        ):
            raise SnapshotError(f"restored worker answers as {hello}, the image holds pid {expect.pid}")
        self._n_ctx = int(server.number(hello, "n_ctx"))

    def _call(self, msg: JsonObject, *, timeout: float) -> JsonObject:
        if self._sock is None:
            raise WorkerError("no connection to the worker")
        self._sock.settimeout(timeout)
        try:
            server.send_msg(self._sock, msg)
            reply = server.recv_msg(self._sock)
        except server.FrameError as exc:
            self._disconnect()
            if self._child is not None:
                self._child.stop()  # hung or gone: the next call starts a new worker
            raise WorkerError(f"worker stopped answering: {exc}") from None
        if not reply.get("ok"):
            if reply.get("kind") == "ValueError":
                raise ValueError(reply.get("error"))
            raise WorkerError(f"worker failed: {reply.get('kind')}: {reply.get('error')}")
        return reply

    def _wait_closed(self) -> None:
        """Wait until the parked worker has closed its end, so the dumped tree holds no connection."""
        assert self._sock is not None
        self._sock.settimeout(10)
        try:
            if self._sock.recv(1):
                raise WorkerError("worker sent data after parking")
        except TimeoutError:
            raise WorkerError("worker did not close its connection after parking") from None
        finally:
            self._disconnect()

    def _disconnect(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _log_tail(self) -> str:
        try:
            lines = (self.folder / "worker.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return f": {' | '.join(lines[-3:])}" if lines else ""
