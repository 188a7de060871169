"""The hub rolled out with the real ``ansible-playbook``: the edgehub_hub role and ``playbooks/hub.yml``
against a host this test creates (a network namespace with its own sshd and install root, reached from
an operator's namespace, as in test_ansible.py), then ``edgehub hub backup`` / ``restore`` on it.

The tests of this module are stages on one hub and run in order: install, a second run that changes
nothing, then a disaster: registries filled (an enrolled device, an operator token, agents from a
device's events), a backup by the script the role schedules, the hub stopped and its data folders
destroyed while the device keeps writing events into its outbox, a restore, the hub started again, and
the device replaying its outbox: every event applied once (the hub's applied-event record ends at the
last sequence, every agent's record at its last event). A tampered backup is refused before anything
is touched.

What is not covered: the ``systemd`` service mode (no systemd as PID 1 here: the hub runs under the
role's ``process`` supervisor; its units are rendered and checked with ``systemd-analyze``), pip as
installer (uv), the embedded Neo4j (``edgehub_hub_neo4j: off``: its JVM start would add a minute, and
backups do not include it), ``become``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness.ansible import (
    BIN,
    CACHE,
    ROOT,
    Run,
    SshFleet,
    assert_unit_hardened,
    playbook,
    ssh_fleet,
)
from tests.harness.netns import Lan, lan

PASSPHRASE = "correct horse battery staple"
FIRST, LATER = 200, 150
"""Events the device publishes before the backup, and writes into its outbox while the hub is gone."""

# Runs where the device runs: its twin into the hub's device registry (as TwinReporter writes it), events
# into its outbox (tests.integration.test_sync's fill_outbox, the
# edge's own SqliteStore), then, when asked, the edge's OutboxPublisher drains it to the hub and waits
# until the hub's applied-event record reaches the outbox's last sequence.
DEVICE_SCRIPT = """
import asyncio, json, sys, time
from pathlib import Path
import nats
from nats.aio.client import RawCredentials
from nats.js.errors import KeyNotFoundError
from edgehub.protocol.ids import kv_key
from edgehub.sync import OutboxPublisher
from edgehub.sync.auth import Trust
from edgehub.protocol.v1 import twin_pb2
from edgehub.sync.streams import APPLIED, DEVICES
from edgehub.sync.tls import nats_tls
from tests.integration.test_sync import DEVICE, fill_outbox

a = json.loads(sys.argv[1])

async def main():
    store = fill_outbox(Path(a["db"]), a["add"], agents=10)
    if not a["url"]:
        return {"outbox": a["add"]}
    trust = Path(a["trust"])
    creds = RawCredentials(Trust.load_or_create(trust).hub_creds("dev"))
    nc = await nats.connect(a["url"], user_credentials=creds, **nats_tls([a["url"]], trust / "ca.pem"))
    twin = twin_pb2.DeviceTwin(schema_version=1, device_id=DEVICE, state=twin_pb2.DEVICE_STATE_RUNNING)
    twin.heartbeat_s, twin.sent_at = 1.0, time.time()
    await (await nc.jetstream().key_value(DEVICES.name)).put(kv_key(DEVICE), twin.SerializeToString())
    publisher = OutboxPublisher(store, nc.jetstream())
    while await publisher.drain_once():
        pass
    kv = await nc.jetstream().key_value(APPLIED.name)
    applied, deadline = 0, time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            applied = int((await kv.get(kv_key(DEVICE))).value or b"0")
        except KeyNotFoundError:
            applied = 0
        if applied >= a["want"]:
            break
        await asyncio.sleep(0.1)
    await nc.close()
    return {"applied": applied}

print(json.dumps(asyncio.run(main())))
"""


@pytest.fixture(autouse=True, scope="module")
def _sshd_installed() -> None:
    """A missing sshd fails these tests (never skips them): bootstrap installs it."""
    if shutil.which("sshd") is None and not Path("/usr/sbin/sshd").exists():
        pytest.fail("openssh-server is not installed (scripts/bootstrap.sh installs it)")


@dataclass
class HubHost:
    tmp: Path
    net: Lan
    fleet: SshFleet
    inventory: Path
    log: Path
    base: dict[str, Any]

    @property
    def root(self) -> Path:
        return self.tmp / "roots" / "hub"

    @property
    def data(self) -> Path:
        return self.root / "var/lib/edgehub-hub"

    @property
    def home(self) -> Path:
        return self.root / "opt/edgehub-hub"

    @property
    def config(self) -> Path:
        return self.root / "etc/edgehub-hub/hub.toml"

    @property
    def nats_url(self) -> str:
        return f"tls://{self.net.addr['hub']}:4222"

    def run(self, **extra: Any) -> Run:
        return playbook("hub.yml", self.inventory, {**self.base, **extra}, fleet=self.fleet, log=self.log)

    def on_hub(self, *cmd: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """A command where the hub runs (its namespace), e.g. the role's scripts."""
        return subprocess.run(
            [*self.net.prefix("hub"), *cmd], capture_output=True, text=True, timeout=timeout, check=False
        )

    def edgehub(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The installed hub's ``edgehub`` where the hub runs."""
        return self.on_hub(str(self.home / "current/bin/edgehub"), *args)

    def operator(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """The operator's ``edgehub`` CLI from the operator's namespace, as the hub's admin."""
        trust = self.data / "trust"
        env = {
            **os.environ,
            "EDGEHUB_API": f"{self.net.addr['hub']}:7443",
            "EDGEHUB_CA": str(trust / "ca.pem"),
            "EDGEHUB_TOKEN_FILE": str(trust / "admin.token"),
            **(env or {}),
        }
        return subprocess.run(
            [*self.net.prefix("ctl"), str(BIN / "edgehub"), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )

    def device(self, add: int, want: int = 0, publish: bool = True) -> dict[str, int]:
        args = {
            "db": str(self.tmp / "device" / "edge.db"),
            "add": add,
            "want": want,
            "url": self.nats_url if publish else "",
            "trust": str(self.data / "trust"),
        }
        (self.tmp / "device").mkdir(exist_ok=True)
        done = subprocess.run(
            [*self.net.prefix("ctl"), sys.executable, "-c", DEVICE_SCRIPT, json.dumps(args)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=180,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        result: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
        return result

    def registries(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for what in ("devices", "tokens", "agents"):
            done = self.operator(what, "list", "--json")
            assert done.returncode == 0, done.stderr[-2000:]
            out[what] = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
        return out


def build_hub_wheelhouse(out: Path) -> tuple[Path, Path]:
    """This work tree's hub wheels in ``out`` and the hub's dependencies (cached across runs)."""
    project, deps = out / "project", CACHE / "wheelhouse-hub"
    done = subprocess.run(
        [str(ROOT / "scripts" / "wheelhouse.sh"), str(project), str(deps)],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
        env={**os.environ, "EDGEHUB_WHEEL_PACKAGE": "hub"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return project, deps


@pytest.fixture(scope="module")
def hub_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubHost]:
    tmp = tmp_path_factory.mktemp("hubrole")
    project, deps = build_hub_wheelhouse(tmp / "wheelhouse")
    (wheel,) = project.glob("edgehub_hub-*.whl")
    with lan(["ctl", "hub"]) as net, ssh_fleet(net, ["hub"], tmp) as fleet:
        addr = net.addr["hub"]
        inventory = tmp / "inventory"
        inventory.mkdir()
        hosts = {
            "all": {
                "children": {
                    "hub": {
                        "hosts": {
                            "hub-1": {
                                "ansible_host": addr,
                                "ansible_user": "root",
                                "ansible_python_interpreter": "/usr/bin/python3",
                                "edgehub_hub_prefix": str(tmp / "roots" / "hub"),
                            }
                        }
                    }
                }
            }
        }
        (inventory / "hosts.yml").write_text(json.dumps(hosts))
        uv = shutil.which("uv")
        assert uv, "uv is not on PATH"
        base = {
            "edgehub_hub_version": wheel.name.split("-")[1],
            "edgehub_hub_wheels": str(project),
            "edgehub_hub_find_links": [str(deps)],
            "edgehub_hub_installer": "uv",
            "edgehub_hub_uv": uv,
            "edgehub_hub_python": "/usr/bin/python3",
            "edgehub_hub_service_manager": "process",
            "edgehub_hub_neo4j": "off",
            "edgehub_hub_api_addr": f"{addr}:7443",
            "edgehub_hub_device_addr": f"{addr}:7444",
            "edgehub_hub_tls_names": [addr],
            "edgehub_hub_backup_passphrase": PASSPHRASE,
            "edgehub_hub_start_timeout_s": 60,
            # the hub's own model is never loaded here (no goals are planned)
            "edgehub_hub_settings": {"dreamer": {"enabled": False}, "hub": {"events_batch": 100}},
        }
        host = HubHost(tmp, net, fleet, inventory, tmp / "ansible.log", base)
        try:
            yield host
        finally:
            ctl = host.home / "bin/edgehub-hub-ctl"
            if ctl.exists():
                host.on_hub(str(ctl), "stop", timeout=90)


def test_install_runs_a_hub_that_answers_its_api(hub_host: HubHost) -> None:
    run = hub_host.run()
    assert run.returncode == 0, run.output[-6000:]
    assert run.recap["hub-1"]["changed"] > 0, run.recap
    root = hub_host.root
    assert (root / "opt/edgehub-hub/current").resolve().name == hub_host.base["edgehub_hub_version"]
    assert (hub_host.data / "trust/account.nk").exists()  # generated by the hub at its first start
    assert (hub_host.data / "nats/jetstream").is_dir()
    done = hub_host.operator("devices", "list", "--json")
    assert done.returncode == 0, done.stderr
    cron = (root / "etc/cron.d/edgehub-hub-backup").read_text()
    assert "opt/edgehub-hub/bin/edgehub-hub-backup" in cron
    assert oct((root / "etc/edgehub-hub/backup.passphrase").stat().st_mode & 0o777) == "0o600"
    print(f"hub install: {run.seconds:.1f} s")


def test_second_run_changes_nothing(hub_host: HubHost) -> None:
    run = hub_host.run()
    assert run.returncode == 0, run.output[-6000:]
    assert run.changed() == {"hub-1": 0}, run.output[-6000:]
    print(f"idempotent hub run: {run.seconds:.1f} s")


def test_units_are_hardened_and_verify(hub_host: HubHost) -> None:
    units = hub_host.root / "etc/systemd/system"
    assert_unit_hardened(
        units / "edgehub-hub.service",
        ("NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "User=root",
         f"ReadWritePaths={hub_host.data}", "CapabilityBoundingSet="),
    )  # fmt: skip
    assert_unit_hardened(
        units / "edgehub-hub-backup.service", ("NoNewPrivileges=yes", "ProtectSystem=strict")
    )
    assert "OnCalendar=" in (units / "edgehub-hub-backup.timer").read_text()


def test_a_bad_setting_is_refused_with_one_line_and_the_hub_keeps_running(hub_host: HubHost) -> None:
    before = hub_host.config.read_text()
    run = hub_host.run(edgehub_hub_settings={"retention": {"events_days": -1}})
    assert run.returncode != 0
    assert "events_days" in run.output, run.output[-3000:]
    assert hub_host.config.read_text() == before  # the template's validate kept the old file
    assert hub_host.operator("devices", "list").returncode == 0


def test_backup_disaster_restore_and_the_device_replays_its_outbox(hub_host: HubHost) -> None:
    h = hub_host
    # registries: an enrolled device, an operator token, agents from the device's events
    token = h.operator("devices", "enroll-token", "dev-1")
    assert token.returncode == 0, token.stderr
    enrolled = h.operator(
        "edge", "enroll", "--token", token.stdout.strip().splitlines()[-1],
        env={"EDGEHUB_EDGE__DEVICE__ID": "dev-1", "EDGEHUB_EDGE__DEVICE__DATA_DIR": str(h.tmp / "dev-1")},
    )  # fmt: skip
    assert enrolled.returncode == 0, enrolled.stderr
    created = h.operator("tokens", "create", "night-shift", "--role", "viewer")
    assert created.returncode == 0, created.stderr
    assert h.device(FIRST, want=FIRST) == {"applied": FIRST}
    before = h.registries()
    assert {d["device_id"] for d in before["devices"]} == {"dev.1"}
    assert len(before["agents"]) == 10

    # the backup, by the script the role schedules
    start = time.monotonic()
    done = h.on_hub(str(h.home / "bin/edgehub-hub-backup"))
    backup_s = time.monotonic() - start
    assert done.returncode == 0, done.stderr[-3000:]
    (backup,) = (h.root / "var/backups/edgehub-hub").iterdir()
    manifest = json.loads((backup / "manifest.json").read_text())
    assert {"EDGEHUB_EVENTS", "KV_edgehub-devices", "KV_edgehub-tokens", "KV_edgehub-applied"} <= {
        s["name"] for s in manifest["streams"]
    }
    assert PASSPHRASE.encode() not in (backup / "trust.enc").read_bytes()
    assert b"SA" not in (backup / "trust.enc").read_bytes()[:2]  # not an nkey seed in clear

    # a tampered copy is refused before anything is touched (the hub still runs)
    tampered = h.tmp / "tampered"
    shutil.copytree(backup, tampered)
    snap = tampered / "streams" / "KV_edgehub-devices.snap"
    data = bytearray(snap.read_bytes())
    data[len(data) // 2] ^= 0xFF
    snap.write_bytes(bytes(data))
    refused = h.edgehub("hub", "restore", "--config", str(h.config), "--from", str(tampered),
                        "--passphrase-file", str(h.root / "etc/edgehub-hub/backup.passphrase"))  # fmt: skip
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "KV_edgehub-devices.snap does not match its sha256" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert h.operator("devices", "list").returncode == 0

    # the disaster: the hub stops, its data folders are gone; the device keeps writing events
    keys = {name: (h.data / "trust" / name).read_bytes() for name in ("account.nk", "operator.nk", "ca.pem")}
    ctl = str(h.home / "bin/edgehub-hub-ctl")
    assert h.on_hub(ctl, "stop").returncode == 0
    shutil.rmtree(h.data)
    h.data.mkdir()
    assert h.device(LATER, publish=False) == {"outbox": LATER}

    start = time.monotonic()
    restored = h.edgehub("hub", "restore", "--config", str(h.config), "--from", str(backup),
                         "--passphrase-file", str(h.root / "etc/edgehub-hub/backup.passphrase"))  # fmt: skip
    restore_s = time.monotonic() - start
    assert restored.returncode == 0, restored.stderr[-3000:]
    # the same keys and CA: enrolled devices' credentials and operators' CA files stay valid
    assert {name: (h.data / "trust" / name).read_bytes() for name in keys} == keys
    started = h.on_hub(ctl, "start")
    assert started.returncode == 0, started.stderr[-3000:]

    # the device reconnects and replays its outbox: every event applied once
    total = FIRST + LATER
    assert h.device(0, want=total) == {"applied": total}
    after = h.registries()
    assert {d["device_id"] for d in after["devices"]} == {"dev.1"}
    assert {t["name"] for t in after["tokens"]} >= {"admin", "night-shift"}
    last = {int(str(a["last_event"]).split("/")[2]) for a in after["agents"]}
    assert last == set(range(total - 9, total + 1))  # every agent's record reached its last event
    assert {int(a["device_seq"]) for a in after["agents"]} == last
    print(f"hub backup: {backup_s:.1f} s ({len(manifest['files'])} files), restore: {restore_s:.1f} s")
