"""Migration between real hosts, with faults: the hub (and its NATS) and two edge daemons, each in a
network namespace of its own on one LAN (tests.harness.netns), each edge a process of its own. An
agent migrates mid-goal while the source, the target or the hub is killed with SIGKILL at a phase of
the migration (failpoints), or while the source is cut off from the LAN. In every case exactly one
device runs the agent to the end, the other's copy has stood down, and the hub's trace has every step
once, each from the device that owned it at that step.

The edges' brain is scripted (tests.harness.edge_proc): the subject is the hand-over, which needs an
agent that takes a known number of steps.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgehub.protocol.v1 import agent_pb2
from edgehub.sync import free_port
from tests.harness.edge_proc import agent_state, start_edge, stop_edges
from tests.harness.hub import EDGEHUB, Hub, start_hub
from tests.harness.netns import Lan, lan
from tests.harness.wait import assert_eventually

S = agent_pb2
ENDED = ("MIGRATION_PHASE_DONE", "MIGRATION_PHASE_ROLLED_BACK")
STEPS = 30
"""The scripted agent finishes in its 30th step (step 29): about 35 s, time for a migration to be
requested mid-goal even on a loaded machine."""
SCRIPT = "tests.integration.test_migration_faults:brain"


def brain(prompt: str) -> str:
    step = int(re.findall(r"Step (\d+) action: $", prompt)[-1]) if prompt.endswith("action: ") else 0
    if step >= STEPS:
        return json.dumps({"thought": "done", "tool": "finish", "args": {"answer": "counted"}})
    # a command of its own each step: an identical repeat would be refused (not repeatable)
    command = f"sleep 1; echo {step}"
    return json.dumps({"thought": f"count {step}", "tool": "run_command", "args": {"command": command}})


class Fleet:
    """The hub and two edges on a LAN; ``a``/``b`` restartable after a kill."""

    def __init__(self, tmp_path: Path, net: Lan) -> None:
        self.tmp = tmp_path
        self.net = net
        self.nats_port, self.device_port = free_port(), free_port()
        self.hub_logs: list[str] = []
        self.hub = self.start_hub()
        self.edges: dict[str, subprocess.Popen[str]] = {}

    def start_hub(self, env: dict[str, str] | None = None) -> Hub:
        if hasattr(self, "hub"):  # a restart: keep the previous one's log
            self.keep_hub_log()
        hub = start_hub(
            self.tmp,
            "hub-net",
            port=self.nats_port,
            prefix=self.net.prefix("hub"),
            host=self.net.addr["hub"],
            device_port=self.device_port,
            env=env,
        )
        hub.wait_ready(timeout=90)
        return hub

    def data_dir(self, device: str) -> Path:
        return self.tmp / device

    def config(self, device: str) -> dict[str, Any]:
        return {
            "device": {"id": device, "data_dir": str(self.data_dir(device))},
            "tools": {"load_entry_points": False},
            "safety": {"stuck_warnings": 100, "failing_repeats": 100},
            "agent": {"max_steps": 100, "max_tool_calls": 100},
            "hub": {"heartbeat_s": 0.5},
        }

    def enroll(self, device: str) -> None:
        done = self.hub.enroll(device, self.data_dir(device), prefix=self.net.prefix(device))
        assert done.returncode == 0, done.stderr

    def start_edge(self, device: str, failpoints: str = "") -> None:
        env = {"EDGEHUB_FAILPOINTS": failpoints} if failpoints else {}
        self.edges[device] = start_edge(self.config(device), SCRIPT, self.net.prefix(device), env)

    def online(self, device: str) -> bool:
        done = self.hub.cli("devices", "list", "--json")
        twins = [json.loads(line) for line in done.stdout.splitlines()] if done.returncode == 0 else []
        return any(t["device_id"] == device and t.get("online") for t in twins)

    def state(self, device: str, agent_id: str = "mover") -> agent_pb2.AgentState | None:
        state: agent_pb2.AgentState | None = agent_state(self.data_dir(device), agent_id)
        return state

    def migration(self) -> dict[str, Any]:
        done = self.hub.cli("agents", "migration", "mover", "--json")
        return json.loads(done.stdout) if done.returncode == 0 else {}

    def stop(self) -> None:
        stop_edges(self.edges.values())
        self.keep_hub_log()

    def keep_hub_log(self) -> None:
        """The hub's log (stderr) into the test's folder, for the failure report."""
        with contextlib.suppress(Exception):
            self.hub_logs.append(self.hub.stop())
        (self.tmp / "hub.log").write_text("\n".join(self.hub_logs))

    def log(self, device: str) -> str:
        path = self.data_dir(device) / "edge.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def report(self) -> str:
        """What each side holds now, for a failure message: the agent's state on both devices, the
        migration as the hub has it, whether the hub lives, and the tail of each log (the hub's is
        only had by stopping it, so a report ends the test's fleet)."""
        lines = []
        for device in ("dev-a", "dev-b"):
            st = self.state(device)
            held = (
                "none" if st is None else f"{S.AgentStatus.Name(st.status)} step {st.step} epoch {st.epoch}"
            )
            alive = self.edges[device].poll() is None if device in self.edges else False
            lines.append(f"{device}: agent {held}; daemon {'running' if alive else 'exited'}")
        running = self.hub.proc.poll() is None
        lines.append(f"hub: {'running' if running else f'exited {self.hub.proc.returncode}'}")
        lines.append(f"migration at the hub: {self.migration() if running else '?'}")
        for device in ("dev-a", "dev-b"):
            lines.append(f"--- {device} log:\n{self.log(device)[-2000:]}")
        self.keep_hub_log()  # stops the hub: a report is only asked for by a test that failed
        hub_log = "\n".join(self.hub_logs)
        lines.append(f"--- hub log:\n{hub_log[-4000:]}")
        return "\n".join(lines)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with lan(["hub", "dev-a", "dev-b"]) as net:
        f = Fleet(tmp_path, net)
        try:
            for device in ("dev-a", "dev-b"):
                f.enroll(device)
                f.start_edge(device)
            assert_eventually(
                lambda: f.online("dev-a") and f.online("dev-b"), timeout=60, what="both edges online"
            )
            yield f
        finally:
            f.stop()


def start_mover(f: Fleet, steps: int = 3) -> None:
    started = f.hub.cli("agents", "start", "-d", "dev-a", "-g", "count", "--agent-id", "mover")
    assert started.returncode == 0, started.stderr
    assert_eventually(
        lambda: (s := f.state("dev-a")) is not None and s.usage.steps >= steps,
        timeout=60,
        what=f"{steps} steps on the source",
    )


def migrate(f: Fleet, wait: float = 0.0) -> dict[str, Any]:
    done = f.hub.cli(
        "agents", "migrate", "mover", "--to", "dev-b", "--wait", str(wait), "--json", timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    m: dict[str, Any] = json.loads(done.stdout)
    return m


def check_one_owner(f: Fleet, owner: str = "dev-b") -> None:
    """The agent finished on ``owner`` only; the other copy stood down; the hub's trace has every
    step once, each from the device that owned the agent at that step."""
    other = "dev-a" if owner == "dev-b" else "dev-b"
    finished = assert_eventually(
        lambda: (s := f.state(owner)) is not None and s.status == S.AGENT_STATUS_FINISHED and s,
        timeout=180,
        what=lambda: f"the agent to finish on {owner}\n{f.report()}",
    )
    assert finished.answer == "counted"
    left = f.state(other)
    assert left is not None
    assert left.status == S.AGENT_STATUS_MIGRATED, S.AgentStatus.Name(left.status)
    m = assert_eventually(
        lambda: (
            (m := f.migration()).get("phase") in ("MIGRATION_PHASE_DONE", "MIGRATION_PHASE_ROLLED_BACK") and m
        ),
        timeout=60,
        what=lambda: f"the migration\n{f.report()}",
    )
    handed_at = int(m["step"])

    seen: list[int] = []

    def whole() -> list[dict[str, Any]] | None:
        """The actions, once every step reached the hub (a source cut off sends its last steps
        late, after the target's first ones)."""
        done = f.hub.cli("agents", "trace", "mover", "--json")
        events = [json.loads(line) for line in done.stdout.splitlines()] if done.returncode == 0 else []
        actions = [e for e in events if e["kind"] == "STEP_KIND_ACTION"]
        seen[:] = [int(e["step"]) for e in actions]
        return actions if set(seen) == set(range(STEPS)) else None

    actions = assert_eventually(whole, timeout=60, what="every step in the trace at the hub", interval=0.5)
    assert sorted(seen) == list(range(STEPS)), seen  # and none twice
    for e in actions:
        assert e["device_id"] == ("dev-a" if int(e["step"]) < handed_at else owner), (e["step"], handed_at)


def test_an_agent_migrates_mid_goal_between_namespaced_hosts(fleet: Fleet) -> None:
    start_mover(fleet)
    assert migrate(fleet, wait=60)["phase"] == "MIGRATION_PHASE_DONE"
    check_one_owner(fleet)


@pytest.mark.parametrize("point", ["migrate_out.marked", "migrate_in.imported"])
def test_an_edge_killed_at_a_phase_of_the_migration_recovers_to_one_owner(fleet: Fleet, point: str) -> None:
    """SIGKILL of the source after it stood down (before it handed the state over), or of the target
    after it imported the state (before it reported): restarted, each completes its part."""
    device = "dev-a" if point.startswith("migrate_out") else "dev-b"
    fleet.edges[device].terminate()
    fleet.edges[device].wait(timeout=30)
    fleet.start_edge(device, failpoints=point)
    assert_eventually(lambda: fleet.online(device), timeout=60, what=f"{device} back online")
    start_mover(fleet)
    migrate(fleet)
    assert fleet.edges[device].wait(timeout=60) == -9, f"{device} was not killed at {point}"
    fleet.start_edge(device)
    check_one_owner(fleet)


@pytest.mark.parametrize("point", ["migration.transferred", "migration.importing"])
def test_the_hub_killed_at_a_phase_of_the_migration_recovers_to_one_owner(fleet: Fleet, point: str) -> None:
    """SIGKILL of the hub (and its NATS) after the epoch moved (before the migration recorded it),
    or after it recorded importing (before MigrateIn went out): restarted, the source's retry or the
    hub's re-drive finishes the migration."""
    fleet.hub.stop()
    fleet.hub = fleet.start_hub(env={"EDGEHUB_FAILPOINTS": point})
    assert_eventually(
        lambda: fleet.online("dev-a") and fleet.online("dev-b"), timeout=60, what="both edges back online"
    )
    start_mover(fleet)
    migrate(fleet)
    assert fleet.hub.proc.wait(timeout=60) == -9, f"the hub was not killed at {point}"
    fleet.hub = fleet.start_hub()
    check_one_owner(fleet)


def test_a_source_cut_off_keeps_the_agent_until_it_can_hand_it_over(fleet: Fleet) -> None:
    """The source's link goes down before the migration reaches it: it keeps running the agent
    offline (it still owns it), the migration waits; healed, it stands down and hands over."""
    start_mover(fleet)
    fleet.net.cut("dev-a")
    at_cut = fleet.state("dev-a")
    assert at_cut is not None
    migrate(fleet)
    time.sleep(4)
    assert fleet.migration()["phase"] == "MIGRATION_PHASE_EXPORTING"
    still = fleet.state("dev-a")
    assert still is not None
    assert still.status == S.AGENT_STATUS_RUNNING
    assert still.step > at_cut.step  # it kept working offline
    assert fleet.state("dev-b") is None
    fleet.net.heal("dev-a")
    check_one_owner(fleet)


def test_a_source_cut_off_right_after_standing_down_hands_over_when_healed(fleet: Fleet) -> None:
    """The link goes down while the hand-over is in flight (the source has stood down): the agent
    runs nowhere until the link is back, then on the target only."""
    start_mover(fleet)
    proc = subprocess.Popen(
        [*fleet.hub.prefix, *migrate_args()], env=cli_env(fleet.hub), stdout=subprocess.PIPE, text=True
    )
    assert_eventually(
        lambda: (s := fleet.state("dev-a")) is not None and s.status == S.AGENT_STATUS_MIGRATED,
        timeout=60,
        what="the source to stand down",
        interval=0.005,
    )
    fleet.net.cut("dev-a")
    proc.wait(timeout=60)
    time.sleep(3)
    target = fleet.state("dev-b")
    source = fleet.state("dev-a")
    assert source is not None
    assert source.status == S.AGENT_STATUS_MIGRATED  # never both
    if target is not None:  # the hand-over got through before the cut
        assert target.epoch == 1
    fleet.net.heal("dev-a")
    check_one_owner(fleet)


def migrate_args() -> list[str]:
    return [*EDGEHUB, "agents", "migrate", "mover", "--to", "dev-b", "--wait", "0"]


def cli_env(hub: Hub) -> dict[str, str]:
    return {**os.environ, **hub.env}
