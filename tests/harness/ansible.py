"""Real Ansible runs against "devices" on this machine: an sshd per network namespace (tests.harness.netns),
each device installing into a root of its own (the role's ``edgehub_edge_prefix``), driven by the real
``ansible-playbook`` from the workspace's venv, started where the operator sits (the hub's namespace).

``ssh_fleet(net, names, tmp)`` starts the sshds with host keys and an authorized key made for the
test (so host keys are checked, never skipped); ``playbook(...)`` runs a playbook and parses its recap;
``build_wheelhouse`` / ``edge_wheel`` make what the role installs: the project's wheels (a fresh build
of this work tree), the dependencies (scripts/wheelhouse.sh, cached under $EDGEHUB_CACHE) and edge
wheels of other versions built from a copy of ``edge/`` (a bumped version, optionally patched).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness.netns import Lan

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = ROOT / "ansible"
BIN = Path(sys.executable).parent
CACHE = Path(os.environ.get("EDGEHUB_CACHE", Path.home() / ".cache" / "edgehub"))
RECAP = re.compile(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", re.M)


@dataclass
class SshFleet:
    """sshd per device; ``known_hosts`` and ``key`` are what the controller needs."""

    net: Lan
    names: list[str]
    key: Path
    known_hosts: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def ssh_args(self) -> str:
        return f"-o UserKnownHostsFile={self.known_hosts} -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes"


def _sshd_config(folder: Path, addr: str) -> Path:
    config = folder / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"ListenAddress {addr}:22",
                f"HostKey {folder / 'host_key'}",
                f"AuthorizedKeysFile {folder / 'authorized_keys'}",
                f"PidFile {folder / 'sshd.pid'}",
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",  # the test's temp folder is not root's home
                "Subsystem sftp internal-sftp",
                "MaxSessions 50",
                "MaxStartups 50",
                "",
            ]
        )
    )
    return config


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@contextlib.contextmanager
def ssh_fleet(net: Lan, names: list[str], tmp: Path) -> Iterator[SshFleet]:
    """An sshd in each of ``names``' namespaces, listening on its LAN address only, accepting one key
    made here; yields once each accepts connections from the first namespace (the operator's)."""
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder
    key = tmp / "id_ed25519"
    _keygen(key)
    fleet = SshFleet(net, names, key, tmp / "known_hosts")
    lines = []
    try:
        for name in names:
            folder = tmp / f"sshd-{name}"
            folder.mkdir()
            _keygen(folder / "host_key")
            shutil.copy(key.with_suffix(".pub"), folder / "authorized_keys")
            config = _sshd_config(folder, net.addr[name])
            lines.append(f"{net.addr[name]} {(folder / 'host_key.pub').read_text().strip()}")
            fleet.procs[name] = subprocess.Popen(
                [*net.prefix(name), "/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
                stderr=(folder / "sshd.log").open("wb"),
            )
        fleet.known_hosts.write_text("\n".join(lines) + "\n")
        for name in names:
            _wait_port(net, net.names[0], net.addr[name], 22, fleet.procs[name])
        yield fleet
    finally:
        for proc in fleet.procs.values():
            proc.terminate()
        for proc in fleet.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


def _wait_port(net: Lan, where: str, host: str, port: int, proc: subprocess.Popen[bytes]) -> None:
    probe = f"import socket; socket.create_connection(({host!r}, {port}), 1)"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"sshd for {host} exited with {proc.returncode}")
        probed = subprocess.run([*net.prefix(where), sys.executable, "-c", probe], capture_output=True)
        if probed.returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"sshd on {host}:{port} did not come up")


@dataclass
class Run:
    """One ``ansible-playbook`` run."""

    returncode: int
    output: str
    seconds: float
    recap: dict[str, dict[str, int]]
    """host -> {ok, changed, failed, ...} from the PLAY RECAP."""

    def changed(self) -> dict[str, int]:
        return {host: counts["changed"] for host, counts in self.recap.items()}


def parse_recap(output: str) -> dict[str, dict[str, int]]:
    """The PLAY RECAP's counters per host (the last recap when there are several)."""
    tail = output.rsplit("PLAY RECAP", 1)[-1]
    return {
        host: {k: int(v) for k, v in (kv.split("=") for kv in counts.split())}
        for host, counts in RECAP.findall(tail)
    }


def playbook(
    name: str,
    inventory: Path,
    extra: dict[str, Any],
    *,
    fleet: SshFleet,
    log: Path,
    timeout: float = 600,
) -> Run:
    """``ansible-playbook playbooks/NAME`` from ``ansible/`` in the operator's namespace, with ``extra``
    as extra vars (a JSON file); its output is appended to ``log``."""
    extra_file = log.with_suffix(f".{name}.{time.monotonic_ns()}.json")
    extra_file.write_text(json.dumps(extra))
    cp_dir = tempfile.mkdtemp(prefix="ehcp")  # ssh control sockets: short paths (108-byte limit)
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_PRIVATE_KEY_FILE": str(fleet.key),
        "ANSIBLE_SSH_ARGS": f"-C -o ControlMaster=auto -o ControlPersist=120s {fleet.ssh_args()}",
        "ANSIBLE_SSH_CONTROL_PATH_DIR": cp_dir,
        "ANSIBLE_LOCAL_TEMP": str(log.parent / "ansible-local"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
    }
    cmd = [
        *fleet.net.prefix(fleet.net.names[0]),
        str(BIN / "ansible-playbook"),
        "-i",
        str(inventory),
        "-e",
        f"@{extra_file}",
        f"playbooks/{name}",
    ]
    start = time.monotonic()
    try:
        done = subprocess.run(
            cmd, cwd=ANSIBLE_DIR, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    finally:
        shutil.rmtree(cp_dir, ignore_errors=True)
    seconds = time.monotonic() - start
    output = done.stdout + done.stderr
    with log.open("a") as f:
        f.write(f"\n===== {name} rc={done.returncode} {seconds:.1f} s\n{output}")
    return Run(done.returncode, output, seconds, parse_recap(done.stdout))


def build_wheelhouse(out: Path) -> tuple[Path, Path]:
    """This work tree's wheels in ``out/project`` and the dependencies (cached across runs)."""
    project, deps = out / "project", CACHE / "wheelhouse-edge"
    done = subprocess.run(
        [str(ROOT / "scripts" / "wheelhouse.sh"), str(project), str(deps)],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return project, deps


def edge_wheel(project: Path, out: Path, version: str, patch: str = "") -> Path:
    """A wheel folder for ``version``: the project's wheels with edgehub-edge rebuilt from a copy of
    ``edge/`` at that version; ``patch`` is Python appended to its ``uplink/twin.py`` (a broken build)."""
    src = out / f"edge-src-{version}"
    shutil.copytree(ROOT / "edge", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "dist"))
    pyproject = src / "pyproject.toml"
    text = pyproject.read_text()
    pyproject.write_text(re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', text, count=1))
    if patch:
        with (src / "src" / "edgehub" / "edge" / "uplink" / "twin.py").open("a") as f:
            f.write("\n\n" + patch + "\n")
    wheels = out / f"wheels-{version}"
    wheels.mkdir()
    for wheel in [*project.glob("*.whl"), project / "requirements.txt"]:
        if not wheel.name.startswith("edgehub_edge-"):
            shutil.copy(wheel, wheels)
    done = subprocess.run(
        ["uv", "build", "--quiet", "--wheel", "--no-sources", "-o", str(wheels), str(src)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return wheels


def project_version(wheels: Path) -> str:
    """The edgehub-edge version in a wheel folder."""
    (wheel,) = wheels.glob("edgehub_edge-*.whl")
    return wheel.name.split("-")[1]


def stop_daemons(prefixes: list[Path]) -> None:
    """Stop edge daemons the playbooks started (process mode), by their pidfiles: they run detached."""
    for prefix in prefixes:
        for pidfile in prefix.glob("run/edgehub/*.pid"):
            with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
                pid = int(pidfile.read_text().strip())
                os.kill(pid, signal.SIGTERM)
                for _ in range(100):
                    os.kill(pid, 0)
                    time.sleep(0.1)
                os.kill(pid, signal.SIGKILL)


def assert_unit_hardened(unit: Path, options: tuple[str, ...]) -> None:
    """A systemd unit a role rendered has each of ``options`` and passes ``systemd-analyze verify``
    (where systemd-analyze is installed: no systemd runs as PID 1 here, so the unit is never started)."""
    text = unit.read_text()
    for option in options:
        assert option in text, option
    analyze = shutil.which("systemd-analyze")
    if analyze:
        done = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True)
        problems = [line for line in done.stderr.splitlines() if unit.name in line]
        assert not problems, done.stderr
