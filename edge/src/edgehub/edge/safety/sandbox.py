"""The sandbox every command runs in: bubblewrap, torn down after each call.

What a sandboxed command gets (and nothing more):

- no network: its own empty network namespace (even loopback reaches nothing of the host's), unless
  the policy rule that allowed the call grants named hosts; then only those, through ``egress``;
- a read-only view of ``/usr`` (and the ``/bin``, ``/lib*`` links into it) and of a short list of
  harmless ``/etc`` files; ``/root``, ``/home``, the daemon's data dir, config and keys are simply not
  there; paths in ``[sandbox] hide`` are covered with an empty tmpfs;
- the agent's workspace at ``/workspace``, the only writable place besides a private ``/tmp``;
- new PID, IPC, UTS, cgroup and user namespaces, all capabilities dropped, a new session (no TTY
  injection), a scrubbed environment;
- limits: memory and process count through a per-call cgroup (see ``cgroups``), CPU seconds and file
  size through rlimits, wall time through the caller's timeout; when the call ends, bwrap's PID
  namespace dies with it and the cgroup is swept, so no child outlives the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shlex
import shutil
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..agent.tools.base import CommandResult
from .cgroups import CallCgroup, Cgroups
from .egress import PROXY_PORT, SANDBOX_DIR, EgressProxy

log = logging.getLogger("edgehub.edge.sandbox")

OUTPUT_TAIL_BYTES = 16_384
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
ETC_FILES = (
    "passwd",
    "group",
    "hosts",
    "nsswitch.conf",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "alternatives",
    "ssl/certs",
    "ca-certificates",
    "mime.types",
)
ROOT_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits of one call."""

    memory_mb: int = 256
    max_pids: int = 64
    cpu_seconds: int = 10
    file_mb: int = 64


async def _read_tail(stream: asyncio.StreamReader) -> bytes:
    tail = b""
    while chunk := await stream.read(65536):
        tail = (tail + chunk)[-OUTPUT_TAIL_BYTES:]
    return tail


async def _run_process(
    argv: list[str], *, timeout_s: float, cwd: Path, env: dict[str, str] | None
) -> tuple[int, bytes, bool]:
    """Run argv in its own session; kill its process group at the timeout. (code, tail, timed_out)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    timed_out = False
    out = b""
    try:
        async with asyncio.timeout(timeout_s):
            out = await _read_tail(proc.stdout)
            await proc.wait()
    except TimeoutError:
        timed_out = True
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # children left in the background die with the call
        await proc.wait()
    return proc.returncode if proc.returncode is not None else -9, out, timed_out


class HostRunner:
    """No sandbox: for development machines without bubblewrap (``[sandbox] mode = "off"``)."""

    async def run(
        self,
        command: str,
        workspace: Path,
        *,
        timeout_s: float,
        env: dict[str, str],
        network: tuple[str, ...] = (),
    ) -> CommandResult:
        full_env = {"PATH": SAFE_PATH, "LANG": "C.UTF-8", "HOME": str(workspace), **env}
        code, out, timed_out = await _run_process(
            ["/bin/sh", "-c", command], timeout_s=timeout_s, cwd=workspace, env=full_env
        )
        killed = f"wall-time limit of {timeout_s:g} s reached" if timed_out else ""
        return CommandResult(code, out.decode(errors="replace"), killed, "timeout" if timed_out else "")


class SandboxUnavailable(RuntimeError):
    pass


class BwrapSandbox:
    """Runs commands in a fresh bubblewrap sandbox per call (see the module docstring)."""

    def __init__(
        self,
        limits: Limits = Limits(),
        *,
        hide: tuple[Path, ...] = (),
        ro_binds: tuple[Path, ...] = (),
        bwrap: str | None = None,
        cgroups: Cgroups | None = None,
        use_cgroups: bool = True,
    ) -> None:
        found = bwrap or shutil.which("bwrap")
        if not found:
            raise SandboxUnavailable(
                "bubblewrap (bwrap) is not installed; install the 'bubblewrap' package "
                '(make setup does) or set [sandbox] mode = "off" on a development machine'
            )
        self.bwrap = found
        self.limits = limits
        self.ro_binds = ro_binds
        self.hide = hide
        self.cgroups: Cgroups | None = cgroups
        self.cgroup_problem = "" if cgroups else "disabled"
        if use_cgroups and cgroups is None:
            self.cgroups, self.cgroup_problem = Cgroups.detect()
            if self.cgroups is None:
                log.warning(
                    "sandbox without cgroup limits (memory/processes by rlimit only): %s", self.cgroup_problem
                )
        self._fixed = self._fixed_args()

    def _fixed_args(self) -> list[str]:
        args = [
            self.bwrap,
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
            "--hostname",
            "sandbox",
            "--ro-bind",
            "/usr",
            "/usr",
        ]
        for name in ROOT_LINKS:
            path = Path("/") / name
            if path.is_symlink():
                args += ["--symlink", os.readlink(path), str(path)]
            elif path.is_dir():
                args += ["--ro-bind", str(path), str(path)]
        for name in ETC_FILES:
            args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
        for extra in self.ro_binds:
            args += ["--ro-bind", str(extra), str(extra)]
        args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
        visible = (Path("/usr"), Path("/etc"), *self.ro_binds)
        for hidden in self.hide:
            hidden = hidden.resolve()
            if any(hidden.is_relative_to(v) for v in visible) and hidden.exists():
                args += ["--tmpfs", str(hidden)]
        return args

    def argv(
        self, command: str, workspace: Path, env: dict[str, str], *, egress: Path | None = None
    ) -> list[str]:
        args = [*self._fixed, "--bind", str(workspace.resolve()), "/workspace", "--chdir", "/workspace"]
        args += ["--clearenv"]
        base = {"PATH": SAFE_PATH, "LANG": "C.UTF-8", "HOME": "/workspace", "TMPDIR": "/tmp"}
        if egress is not None:
            proxy = f"http://127.0.0.1:{PROXY_PORT}"
            base |= {k: proxy for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}
            args += ["--bind", str(egress), SANDBOX_DIR]
            # the forwarder joins the sandbox's loopback to the daemon's egress proxy, then the command runs
            ready = "/tmp/.edgehub-egress-ready"
            wait = f"i=0; while [ ! -e {ready} ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); done"
            start = f'python3 {SANDBOX_DIR}/forwarder.py >/dev/null 2>&1 & {wait}; exec /bin/sh -c "$1"'
            for key, value in {**base, **env}.items():
                args += ["--setenv", key, value]
            return [*args, "--", "/bin/sh", "-c", start, "edgehub-egress", command]
        for key, value in {**base, **env}.items():
            args += ["--setenv", key, value]
        return [*args, "--", "/bin/sh", "-c", command]

    def _enter(self, cgroup: CallCgroup | None) -> list[str]:
        """A /bin/sh prelude that joins the call's cgroups and sets rlimits, then execs bwrap.

        Done in a shell rather than a Python ``preexec_fn`` so the daemon can spawn with vfork:
        forking a process that maps a model costs page-table copying on every call.
        """
        lim = self.limits
        # CPU: SIGXCPU at the soft limit (reported as such), SIGKILL a second later; -f counts 512 B blocks
        cpu = lim.cpu_seconds
        steps = [
            "ulimit -c 0",
            f"ulimit -S -t {cpu}",
            f"ulimit -H -t {cpu + 1}",
            f"ulimit -f {lim.file_mb * 2048}",
        ]
        if cgroup is None:  # no cgroup: bound the address space instead (coarser)
            steps.append(f"ulimit -v {lim.memory_mb * 1024}")
        steps += [f"echo $$ > {shlex.quote(str(procs))}" for procs in (cgroup.procs_files if cgroup else ())]
        # any step failing means the limits are not in place: refuse to run (exit 125) rather than run without
        script = " && ".join(steps) + ' || exit 125; exec "$@"'
        return ["/bin/sh", "-c", script, "edgehub-sandbox"]

    async def run(
        self,
        command: str,
        workspace: Path,
        *,
        timeout_s: float,
        env: dict[str, str],
        network: tuple[str, ...] = (),
    ) -> CommandResult:
        if not network:
            return await self._run(command, workspace, timeout_s, env)
        with tempfile.TemporaryDirectory(prefix="edgehub-egress-") as tmp:
            proxy = EgressProxy(network, Path(tmp))
            await proxy.start()
            try:
                result = await self._run(command, workspace, timeout_s, env, egress=Path(tmp))
            finally:
                await proxy.close()
        return dataclasses.replace(result, output=result.output + proxy.report())

    async def _run(
        self, command: str, workspace: Path, timeout_s: float, env: dict[str, str], egress: Path | None = None
    ) -> CommandResult:
        cgroup = None
        if self.cgroups is not None:
            cgroup = await asyncio.to_thread(
                self.cgroups.create,
                memory_bytes=self.limits.memory_mb * 1024 * 1024,
                max_pids=self.limits.max_pids,
            )
        try:
            code, out, timed_out = await _run_process(
                [*self._enter(cgroup), *self.argv(command, workspace, env, egress=egress)],
                timeout_s=timeout_s,
                cwd=workspace,
                env={"PATH": SAFE_PATH},
            )
            oom = cgroup.oom_killed() if cgroup else False
            pids_hit = cgroup.pids_limit_hit() if cgroup else False
        finally:
            if cgroup is not None:
                cgroup.destroy()
        text = out.decode(errors="replace")
        if code == 125 and text.startswith("edgehub-sandbox:"):
            return CommandResult(
                code, text, "the sandbox could not apply its limits; the command did not run", "setup"
            )
        limit, why = self._limit(code, timed_out, oom, pids_hit, timeout_s)
        return CommandResult(code, text, why, limit)

    def _limit(
        self, code: int, timed_out: bool, oom: bool, pids_hit: bool, timeout_s: float
    ) -> tuple[str, str]:
        if timed_out:
            return "timeout", f"wall-time limit of {timeout_s:g} s reached"
        if oom:
            return "memory", f"memory limit of {self.limits.memory_mb} MB exceeded"
        if code in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
            return "cpu", f"CPU-time limit of {self.limits.cpu_seconds} s reached"
        if pids_hit:
            return "processes", f"process limit of {self.limits.max_pids} reached (forks were refused)"
        return "", ""
