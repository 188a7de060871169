"""A NATS leaf node on a site gateway, installed with the real ``ansible-playbook`` (the edgehub_nats_leaf
role, playbooks/leaf.yml), between a site's edge and a real hub.

Three network namespaces on one LAN: the hub (its embedded nats-server with the leafnode listener on,
and the operator's controller), a gateway with an sshd, and a device. The hub's NATS client port listens
on the hub's loopback only, so the device *cannot* reach it: everything the edge does over NATS
(heartbeats, its twin in KV, its command consumer, its agent's JetStream-acknowledged events) goes
through the leaf. The leaf runs in operator mode with the hub's trust: the device authenticates there
with its own credentials and its per-device permissions are enforced there.

Both hops are TLS, handshake first: the device verifies the leaf's certificate (issued by the hub's
CA, ``leaf-config --tls-name``) with the CA enrollment gave it, and the leaf verifies the hub's
leafnode listener, which the hub puts under TLS because it is not on loopback.

The tests are stages on one site and run in order: install the leaf; an edge with only the leaf's URL
comes online and runs an agent started from the hub; the leaf refuses anonymous clients and a device
publishing as another; a capture on the gateway sees only ciphertext on both hops and a plaintext
client refused; the operator loop run again (``edgehub hub leaf-config`` and the playbook)
changes nothing; a device revoked at the hub is, after that loop, refused at the leaf; ansible-lint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgehub.sync import free_port
from edgehub.sync.server import nats_server_binary
from tests.harness.ansible import ANSIBLE_DIR, BIN, Run, SshFleet, assert_unit_hardened, playbook, ssh_fleet
from tests.harness.edge_proc import start_edge, stop_edges
from tests.harness.hub import Hub, start_hub
from tests.harness.netns import Lan, lan
from tests.harness.sniff import capture
from tests.harness.wait import assert_eventually

DEVICE = "site-edge-1"
SCRIPT = "tests.integration.test_nats_leaf:brain"
LEAF_PORT = 4222


def brain(prompt: str) -> str:
    """One tool call (sandboxed), then done: a few JetStream events each way."""
    step = int(re.findall(r"Step (\d+) action: $", prompt)[-1]) if prompt.endswith("action: ") else 1
    if step >= 2:  # the prompt counts steps from 1
        return json.dumps({"thought": "done", "tool": "finish", "args": {"answer": "through the leaf"}})
    return json.dumps({"thought": "look", "tool": "run_command", "args": {"command": "echo leaf"}})


@pytest.fixture(autouse=True, scope="module")
def _sshd_installed() -> None:
    """A missing sshd fails these tests (never skips them): bootstrap installs it."""
    if shutil.which("sshd") is None and not Path("/usr/sbin/sshd").exists():
        pytest.fail("openssh-server is not installed (scripts/bootstrap.sh installs it)")


@dataclass
class Site:
    tmp: Path
    net: Lan
    hub: Hub
    hub_env: dict[str, str]
    """The hub's settings, for the hub-local ``edgehub hub leaf-config``."""
    nats_port: int
    fleet: SshFleet
    inventory: Path
    extra: dict[str, Any]
    log: Path
    edges: list[subprocess.Popen[str]]

    @property
    def root(self) -> Path:
        """The gateway's install root (edgehub_nats_leaf_prefix)."""
        return self.tmp / "roots" / "gw"

    @property
    def leaf_url(self) -> str:
        return f"tls://{self.net.addr['gw']}:{LEAF_PORT}"

    @property
    def data_dir(self) -> Path:
        return self.tmp / DEVICE

    def leaf_config(self) -> subprocess.CompletedProcess[str]:
        return self.hub.cli(
            "hub", "leaf-config", "--name", "gw", "--out", str(self.extra["edgehub_nats_leaf_trust_dir"]),
            "--tls-name", self.net.addr["gw"], env=self.hub_env,
        )  # fmt: skip

    def run(self) -> Run:
        return playbook("leaf.yml", self.inventory, self.extra, fleet=self.fleet, log=self.log)

    def twins(self) -> dict[str, dict[str, Any]]:
        done = self.hub.cli("devices", "list", "--json")
        assert done.returncode == 0, done.stderr
        return {d["device_id"]: d for d in map(json.loads, done.stdout.splitlines())}

    def leaf_log(self) -> str:
        path = self.root / "var/log/edgehub-nats-leaf/edgehub-nats-leaf.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def on_device(self, code: str) -> dict[str, Any]:
        """Run ``code`` (async Python, ``creds``/``url``/``inbox`` given, ``tls`` the TLS arguments with
        the CA enrollment gave, sets ``out``) in the device's namespace; returns ``out``."""
        program = textwrap.dedent(
            """
            import asyncio, json, sys
            from pathlib import Path
            import nats
            from edgehub.sync.tls import nats_tls
            creds, url, inbox = sys.argv[1:4]
            tls = nats_tls([url], Path(creds).with_name("nats-ca.pem"))
            out = {}
            async def main():
            %s
            asyncio.run(main())
            print(json.dumps(out))
            """
        ) % textwrap.indent(textwrap.dedent(code), "    ")
        done = subprocess.run(
            [*self.net.prefix("dev"), sys.executable, "-c", program,
             str(self.data_dir / "identity" / "device.creds"), self.leaf_url, f"_INBOX_{DEVICE}"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
        return result


def stop_leaf(site: Site) -> None:
    """The leaf runs detached (process mode): stop it by its supervisor, where it runs."""
    ctl = site.root / "opt/edgehub-nats-leaf/bin/edgehub-nats-leaf-ctl"
    if ctl.exists():
        subprocess.run(
            [*site.net.prefix("gw"), str(ctl), "stop"], capture_output=True, timeout=60, check=False
        )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("leaf")
    with lan(["hub", "gw", "dev"]) as net:
        nats_port, leaf_port = free_port(), free_port()
        hub_env = {
            # the NATS client port on the hub's loopback only: devices cannot reach it, the leaf can
            # reach the leafnode listener on the LAN
            "EDGEHUB_HUB__NATS__EMBEDDED_HOST": "127.0.0.1",
            "EDGEHUB_HUB__NATS__EMBEDDED_PORT": str(nats_port),
            "EDGEHUB_HUB__NATS__LEAF_PORT": str(leaf_port),
            "EDGEHUB_HUB__NATS__LEAF_HOST": net.addr["hub"],
            "EDGEHUB_HUB__AUTH__DIR": str(tmp / "hub" / "trust"),
        }
        hub = start_hub(
            tmp / "hub",
            "hub-leaf",
            port=nats_port,
            prefix=net.prefix("hub"),
            host=net.addr["hub"],
            env=hub_env,
        )
        edges: list[subprocess.Popen[str]] = []
        site: Site | None = None
        try:
            hub.wait_ready(timeout=90)
            with ssh_fleet(net, ["gw"], tmp) as fleet:
                inventory = tmp / "inventory"
                inventory.mkdir()
                host = {
                    "ansible_host": net.addr["gw"],
                    "ansible_user": "root",
                    "ansible_python_interpreter": "/usr/bin/python3",
                    "edgehub_nats_leaf_prefix": str(tmp / "roots" / "gw"),
                }
                (inventory / "hosts.yml").write_text(
                    json.dumps({"all": {"children": {"nats_leaf": {"hosts": {"gw": host}}}}})
                )
                extra = {
                    "edgehub_nats_leaf_binary_src": nats_server_binary(),
                    "edgehub_nats_leaf_trust_dir": str(tmp / "leaf-gw"),
                    "edgehub_nats_leaf_hub_urls": [f"nats-leaf://{net.addr['hub']}:{leaf_port}"],
                    "edgehub_nats_leaf_listen": f"{net.addr['gw']}:{LEAF_PORT}",
                    "edgehub_nats_leaf_service_manager": "process",
                }
                site = Site(
                    tmp, net, hub, hub_env, nats_port, fleet, inventory, extra, tmp / "ansible.log", edges
                )
                yield site
        finally:
            stop_edges(edges)
            if site is not None:
                stop_leaf(site)
            (tmp / "hub.log").write_text(hub.stop())


def test_leaf_playbook_installs_a_leaf_connected_to_the_hub(site: Site) -> None:
    made = site.leaf_config()
    assert made.returncode == 0, made.stdout + made.stderr
    assert "new credentials leaf:gw" in made.stdout, made.stdout
    assert "server.pem: new certificate" in made.stdout, made.stdout
    run = site.run()
    assert run.returncode == 0, run.output[-6000:]
    assert run.recap["gw"]["failed"] == 0, run.recap
    assert run.recap["gw"]["changed"] > 0, run.recap
    etc = site.root / "etc/edgehub-nats-leaf"
    assert stat.S_IMODE((etc / "leaf.creds").stat().st_mode) == 0o600
    conf = (etc / "nats-leaf.conf").read_text()
    assert "jetstream" not in re.sub(r"(?m)#.*$", "", conf)  # the leaf keeps no streams
    trust = (etc / "trust.conf").read_text()
    assert "resolver: MEMORY" in trust
    assert "SEED" not in trust.upper()  # public: JWTs, no seed
    assert stat.S_IMODE((etc / "server.key").stat().st_mode) == 0o600
    assert conf.count("handshake_first: true") == 2, conf  # the edges' listener and the hub remote
    # the role waited for the leaf's connection (monitor /leafz); the leaf logged it too
    assert "Leafnode connection created" in site.leaf_log(), site.leaf_log()[-2000:]
    print(f"leaf install: {run.seconds:.1f} s")


def test_edge_with_only_the_leaf_url_comes_online_and_runs_an_agent(site: Site) -> None:
    # the device cannot reach the hub's NATS: its only way is the leaf
    probe = f"import socket; socket.create_connection(({site.net.addr['hub']!r}, {site.nats_port}), 2)"
    direct = subprocess.run([*site.net.prefix("dev"), sys.executable, "-c", probe], capture_output=True)
    assert direct.returncode != 0, "the device reaches the hub's NATS directly: the test would prove nothing"
    enrolled = site.hub.enroll(DEVICE, site.data_dir, prefix=site.net.prefix("dev"))
    assert enrolled.returncode == 0, enrolled.stdout + enrolled.stderr
    config = {
        "device": {"id": DEVICE, "data_dir": str(site.data_dir)},
        "hub": {"nats_url": site.leaf_url, "heartbeat_s": 0.5},
        "tools": {"load_entry_points": False},
        "memory": {"episodic": False},
    }
    site.edges.append(start_edge(config, SCRIPT, site.net.prefix("dev")))
    log = site.data_dir / "edge.log"
    assert_eventually(
        lambda: site.twins().get(DEVICE, {}).get("online"),
        timeout=90,
        what=lambda: f"{DEVICE} online at the hub\n{log.read_text(errors='replace')[-2000:]}",
    )
    started = site.hub.cli(
        "agents", "start", "-d", DEVICE, "-g", "echo through the leaf", "--agent-id", "leafy"
    )
    assert started.returncode == 0, started.stderr

    def finished() -> dict[str, Any] | None:
        got = site.hub.cli("agents", "get", "leafy")
        record: dict[str, Any] = json.loads(got.stdout) if got.returncode == 0 else {}
        return record if record.get("status") == "AGENT_STATUS_FINISHED" else None

    record = assert_eventually(
        finished,
        timeout=120,
        what=lambda: f"agent leafy finished at the hub\n{log.read_text(errors='replace')[-3000:]}",
    )
    assert record["device_id"] == DEVICE, record
    trace = site.hub.cli("agents", "trace", "leafy", "--json")
    assert int(record["step"]) >= 1, f"{record}\n{trace.stdout[-3000:]}"


def test_leaf_refuses_anonymous_clients_and_a_device_publishing_as_another(site: Site) -> None:
    out = site.on_device(
        """
        errors = []
        async def error_cb(exc):
            errors.append(str(exc))
        try:
            anonymous = await nats.connect(url, allow_reconnect=False, connect_timeout=5, error_cb=error_cb,
                                           **tls)
            out["anonymous"] = "accepted"
            await anonymous.close()
        except Exception as exc:
            out["anonymous"] = f"refused: {exc!r} {errors}"
        errors.clear()
        nc = await nats.connect(url, user_credentials=creds, inbox_prefix=inbox.encode(),
                                allow_reconnect=False, error_cb=error_cb, **tls)
        await nc.publish("edgehub.ev.site-edge-2.a1", b"spoofed")
        await nc.flush()
        await asyncio.sleep(0.5)
        out["as_another"] = list(errors)
        await nc.close()
        """
    )
    assert out["anonymous"].startswith("refused"), out
    assert "authoriz" in out["anonymous"].lower(), out
    assert any("permissions violation" in e for e in out["as_another"]), out
    # refused by the leaf itself, not further on at the hub
    assert assert_eventually(
        lambda: 'Publish Violation - Subject "edgehub.ev.site-edge-2.a1"' in site.leaf_log(),
        timeout=10,
        what="the leaf's log of the violation",
    )


def test_site_lan_carries_only_ciphertext_and_the_leaf_refuses_plaintext(site: Site) -> None:
    """A capture on the gateway (every interface: the device's hop and the hub's) while the device
    publishes a marker through JetStream, acknowledged by the hub; then a client that talks plaintext
    with another marker. The second marker shows the capture sees payloads; the first must be in none."""
    secret, clear = b"MARKER-c4f1-valve-12-open", b"MARKER-9e2d-sent-in-clear"
    leaf_port = int(site.extra["edgehub_nats_leaf_hub_urls"][0].rsplit(":", 1)[1])
    with capture(site.net.prefix("gw")) as wire:
        out = site.on_device(
            f"""
            nc = await nats.connect(url, user_credentials=creds, inbox_prefix=inbox.encode(),
                                    allow_reconnect=False, connect_timeout=10, **tls)
            ack = await nc.jetstream().publish("edgehub.ev.{DEVICE}.wire-check", {secret!r})
            out["acked"] = ack.seq
            await nc.close()
            host, port = url.split("://")[1].rsplit(":", 1)
            try:
                plain = await nats.connect(f"nats://{{host}}:{{port}}", user_credentials=creds,
                                           inbox_prefix=inbox.encode(), allow_reconnect=False,
                                           connect_timeout=3)
                out["plaintext"] = "accepted"
                await plain.close()
            except Exception as exc:
                out["plaintext"] = f"refused: {{exc!r}}"
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b'CONNECT {{"name": "' + {clear!r} + b'"}}\\r\\nPING\\r\\n')
            await writer.drain()
            out["answer"] = (await asyncio.wait_for(reader.read(4096), 10)).decode(errors="replace")
            writer.close()
            """
        )
    assert out["acked"] > 0, out
    assert out["plaintext"].startswith("refused"), out
    assert "INFO" not in out["answer"], out
    assert "PONG" not in out["answer"], out
    device_hop, hub_hop = wire.on(LEAF_PORT), wire.on(leaf_port)
    assert clear in device_hop, "the capture saw no plaintext payload: it would prove nothing"
    assert len(device_hop) > 2000, len(device_hop)
    assert len(hub_hop) > 2000, len(hub_hop)
    assert secret not in wire.anywhere()
    assert b"CONNECT" not in hub_hop  # the device's hop holds the plaintext attempt's
    for hop in (device_hop, hub_hop):
        assert b"INFO {" not in hop
        assert b"edgehub.ev." not in hop


def test_operator_loop_again_changes_nothing(site: Site) -> None:
    made = site.leaf_config()
    assert made.returncode == 0, made.stdout + made.stderr
    assert "trust.conf: unchanged" in made.stdout, made.stdout
    assert "leaf.creds: kept" in made.stdout, made.stdout
    assert "server.pem: kept" in made.stdout, made.stdout
    run = site.run()
    assert run.returncode == 0, run.output[-6000:]
    assert run.changed() == {"gw": 0}, run.output[-6000:]
    print(f"idempotent leaf run: {run.seconds:.1f} s")


def test_unit_is_hardened_and_verifies(site: Site) -> None:
    assert_unit_hardened(
        site.root / "etc/systemd/system/edgehub-nats-leaf.service",
        ("NoNewPrivileges=yes", "ProtectSystem=strict", "CapabilityBoundingSet=",
         "MemoryDenyWriteExecute=yes", "RestrictNamespaces=yes", "SystemCallFilter=@system-service",
         "ExecReload=/bin/kill -HUP $MAINPID"),
    )  # fmt: skip


def test_device_revoked_at_the_hub_is_refused_at_the_leaf_after_the_loop(site: Site) -> None:
    starts = site.leaf_log().count("Server is ready")
    revoked = site.hub.cli("devices", "revoke", DEVICE, "--reason", "leaf test")
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    made = site.leaf_config()
    assert made.returncode == 0, made.stdout + made.stderr
    assert "trust.conf: written" in made.stdout, made.stdout
    run = site.run()
    assert run.returncode == 0, run.output[-6000:]
    assert run.changed()["gw"] > 0, run.output[-6000:]
    # reloaded in place (the site's other edges stay connected), not restarted
    assert "Reloaded server configuration" in site.leaf_log()
    assert site.leaf_log().count("Server is ready") == starts
    out = site.on_device(
        """
        try:
            nc = await nats.connect(url, user_credentials=creds, inbox_prefix=inbox.encode(),
                                    allow_reconnect=False, connect_timeout=5, **tls)
            out["device"] = "accepted"
            await nc.close()
        except Exception as exc:
            out["device"] = f"refused: {exc!r}"
        """
    )
    assert out["device"].startswith("refused"), out
    assert assert_eventually(
        lambda: not site.twins().get(DEVICE, {}).get("online"), timeout=60, what=f"{DEVICE} offline"
    )


def test_ansible_lint_passes_on_the_leaf_role_and_playbook() -> None:
    done = subprocess.run(
        [str(BIN / "ansible-lint"), "-q", "--nocolor", "playbooks/leaf.yml", "roles/edgehub_nats_leaf"],
        cwd=ANSIBLE_DIR,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"},
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
