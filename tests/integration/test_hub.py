"""The hub daemon as a subprocess with its embedded nats-server, and an edge daemon reporting to it:
the agent appears in the fleet registry with its device and final status; SIGTERM stops the hub."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import urllib.request
from pathlib import Path

import grpc
import nats
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from nats.js.errors import KeyNotFoundError, NotFoundError

from edgehub.edge.app import EdgeDaemon
from edgehub.edge.config import EdgeConfig
from edgehub.llm.fake import FakeBrain
from edgehub.protocol import subjects
from edgehub.protocol.ids import kv_key
from edgehub.protocol.v1 import agent_pb2
from edgehub.sync import OutboxPublisher, free_port
from edgehub.sync.streams import APPLIED
from tests.harness.hub import Hub, start_hub
from tests.harness.wait import assert_eventually, eventually

S = agent_pb2


def act(tool: str, **args: object) -> str:
    return json.dumps({"thought": "go", "tool": tool, "args": args})


def registry(what: str, hub: Hub) -> list[dict[str, object]]:
    """``edgehub agents list`` / ``edgehub devices list`` through the hub's gRPC API."""
    done = hub.cli(what, "list", "--json")
    return [json.loads(line) for line in done.stdout.splitlines()] if done.returncode == 0 else []


def agents(hub: Hub) -> list[dict[str, object]]:
    return registry("agents", hub)


def devices(hub: Hub) -> dict[str, dict[str, object]]:
    return {str(d["device_id"]): d for d in registry("devices", hub)}


def check_api_errors_health_and_reflection(hub: Hub) -> None:
    missing = hub.cli("agents", "get", "nope")
    assert missing.returncode == 1
    assert "not_found: no agent 'nope'" in missing.stderr
    bad = hub.cli("agents", "start", "-d", "x", "-g", " ")
    assert bad.returncode == 2
    assert "invalid_argument" in bad.stderr
    down = hub.cli("devices", "list", "--api", "127.0.0.1:1")
    assert down.returncode == 2
    assert "cannot reach the hub API at 127.0.0.1:1" in down.stderr
    tls = grpc.ssl_channel_credentials((hub.trust / "ca.pem").read_bytes())
    with grpc.secure_channel(hub.api, tls) as channel:  # health and reflection need no token
        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in replies for s in r.list_services_response.service}
    assert "edgehub.v1.HubService" in names


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


async def test_an_edge_agent_appears_in_the_hub_registry_with_metrics_on_both_sides(tmp_path: Path) -> None:
    hub_metrics = free_port()
    hub = start_hub(tmp_path, metrics_port=hub_metrics)
    try:
        await asyncio.to_thread(hub.wait_ready)
        enrolled = await asyncio.to_thread(hub.enroll, "pi-kitchen", tmp_path / "edge")
        assert enrolled.returncode == 0, enrolled.stderr
        cfg = EdgeConfig.model_validate(  # no nats_url: the URLs and credentials come from enrollment
            {
                "device": {"id": "pi-kitchen", "data_dir": str(tmp_path / "edge")},
                "tools": {"load_entry_points": False},
                "metrics": {"port": 0},
            }
        )
        script = [act("write_file", path="a.txt", content="x"), act("finish", answer="done")]
        async with EdgeDaemon(cfg, brain=FakeBrain(script)) as edge:
            runner = asyncio.create_task(edge.run())
            twin = await eventually(lambda: devices(hub).get("pi-kitchen"), within=30)
            assert twin["online"] is True
            assert twin["twin"]["version"] == "0.1.0"
            agent_id = edge.submit("write a file")
            store = edge.store
            assert store is not None
            await eventually(lambda: store.load_agent(agent_id).status == S.AGENT_STATUS_FINISHED, within=30)
            assert edge.metrics_port is not None
            edge_metrics = await asyncio.to_thread(scrape, edge.metrics_port)
            assert (
                'edgehub_edge_steps_total{device="pi-kitchen",outcome="ok",tool="write_file"} 1.0'
                in edge_metrics
            )
            assert 'edgehub_edge_agents_running{device="pi-kitchen"}' in edge_metrics
            assert "edgehub_edge_step_seconds_bucket" in edge_metrics
            edge.request_stop()
            await runner
        gone = await eventually(
            lambda: devices(hub)["pi-kitchen"]["online"] is False and devices(hub), within=30
        )
        assert gone["pi-kitchen"]["twin"]["state"] == "DEVICE_STATE_STOPPED"
        records = await eventually(
            lambda: [
                r for r in agents(hub) if r["agent_id"] == agent_id and r["status"] == "AGENT_STATUS_FINISHED"
            ],
            within=60,
        )
        assert records[0]["device_id"] == "pi-kitchen"
        assert records[0]["step"] == 1
        trace = await asyncio.to_thread(hub.cli, "agents", "trace", agent_id, "--json")
        assert [json.loads(line)["action"]["tool"] for line in trace.stdout.splitlines()] == [
            "write_file",
            "finish",
        ]
        await asyncio.to_thread(check_api_errors_health_and_reflection, hub)
        hub_text = await asyncio.to_thread(scrape, hub_metrics)
        applied = [
            line for line in hub_text.splitlines() if line.startswith("edgehub_hub_events_applied_total")
        ]
        assert applied
        assert float(applied[0].split()[-1]) >= 2
        metric = {
            line.split()[0]: float(line.split()[-1]) for line in hub_text.splitlines() if line[:1] != "#"
        }
        assert metric["edgehub_hub_event_lag_seconds_count"] >= 2  # every applied event observed
        assert metric["edgehub_hub_event_queue_seconds_count"] >= 2
        assert metric["edgehub_hub_events_pending"] == 0  # all applied and acknowledged
        # the device's backlog as the hub sees it: its last twin's outbox head is all applied
        assert metric['edgehub_hub_device_lag_events{device="pi-kitchen"}'] == 0
        assert 'edgehub_hub_device_outbox_depth{device="pi-kitchen"}' in metric
    finally:
        stderr = hub.stop()
    assert hub.proc.returncode == 0, stderr[-2000:]
    assert "listening for edges" in stderr


async def test_hub_commands_start_stop_and_approve_agents_on_an_edge(tmp_path: Path) -> None:
    hub = start_hub(tmp_path, "hub-cmd")
    policy = tmp_path / "policy.toml"
    policy.write_text(
        'version = 1\n[[rules]]\nid = "ask"\ntools = ["write_file"]\neffect = "needs_approval"\n'
        '[[rules]]\nid = "rest"\ntools = ["*"]\neffect = "allow"\n'
    )
    cfg = EdgeConfig.model_validate(
        {
            "device": {"id": "pi-garage", "data_dir": str(tmp_path / "edge")},
            "tools": {"load_entry_points": False},
            "safety": {"policy": str(policy), "stuck_warnings": 100, "failing_repeats": 100},
            "hub": {"heartbeat_s": 0.5},
        }
    )

    def brain(prompt: str) -> str:
        if "Goal: loop" in prompt:  # a command of its own each step (an identical one is not repeated)
            return act("run_command", command=f"sleep 1; echo {len(re.findall('action: ', prompt))}")
        if prompt.endswith("Step 1 action: "):  # the report goal first writes (needs approval)
            return act("write_file", path="report.txt", content="ok")
        return act("finish", answer="ok")

    try:
        await asyncio.to_thread(hub.wait_ready)
        assert (await asyncio.to_thread(hub.enroll, "pi-garage", tmp_path / "edge")).returncode == 0
        async with EdgeDaemon(cfg, brain=FakeBrain(brain)) as edge:
            runner = asyncio.create_task(edge.run())
            store = edge.store
            assert store is not None

            def hub_cli(*args: str) -> subprocess.CompletedProcess[str]:  # the operator's CLI on the gRPC API
                return hub.cli("agents", *args)

            started = await asyncio.to_thread(
                hub_cli, "start", "-d", "pi-garage", "-g", "loop", "--agent-id", "a-loop"
            )
            assert started.returncode == 0, started.stderr
            await eventually(
                lambda: store.has_agent("a-loop") and store.load_agent("a-loop").usage.steps >= 1, within=30
            )
            await asyncio.to_thread(hub_cli, "stop", "a-loop", "-d", "pi-garage", "--reason", "enough")
            await eventually(lambda: store.load_agent("a-loop").status == S.AGENT_STATUS_STOPPED, within=30)
            assert store.load_agent("a-loop").failure_reason == "enough"

            await asyncio.to_thread(
                hub_cli, "start", "-d", "pi-garage", "-g", "report", "--agent-id", "a-rep"
            )
            await eventually(
                lambda: (
                    store.has_agent("a-rep")
                    and store.load_agent("a-rep").status == S.AGENT_STATUS_AWAITING_APPROVAL
                ),
                within=30,
            )
            decided = await asyncio.to_thread(
                hub_cli, "decide", "a-rep/0", "-d", "pi-garage", "--approve", "--note", "for ana"
            )
            assert decided.returncode == 0, decided.stderr
            await eventually(lambda: store.load_agent("a-rep").status == S.AGENT_STATUS_FINISHED, within=30)
            approval = store.get_approval("a-rep/0")
            assert approval is not None
            # who the token says, signed by the hub (the enrolled device fetched no key: enrollment gave it)
            assert (approval.decided_by, approval.decided_via, approval.note) == (
                "operator:admin",
                "hub",
                "for ana",
            )
            records = await eventually(
                lambda: (
                    {r["agent_id"]: r["status"] for r in agents(hub)}.get("a-rep") == "AGENT_STATUS_FINISHED"
                    and agents(hub)
                ),
                within=30,
            )
            assert {r["agent_id"]: r["status"] for r in records}["a-loop"] == "AGENT_STATUS_STOPPED"

            # drain: the twin says so, a new agent is refused with the reason in the device's dead letters
            drained = await asyncio.to_thread(
                hub.cli, "devices", "drain", "pi-garage", "--reason", "maintenance"
            )
            assert drained.returncode == 0, drained.stderr
            await eventually(
                lambda: devices(hub).get("pi-garage", {}).get("twin", {}).get("draining") is True, within=30
            )
            await asyncio.to_thread(hub_cli, "start", "-d", "pi-garage", "-g", "late", "--agent-id", "a-late")
            nc = await nats.connect(hub.url, user_credentials=hub.creds())
            js = nc.jetstream()

            async def refused() -> str:
                try:
                    msg = await js.get_last_msg(
                        subjects.DEADLETTER_STREAM, subjects.device_deadletter("pi-garage")
                    )
                except NotFoundError:
                    return ""
                return (msg.headers or {}).get("Edgehub-Reason", "")

            for _ in range(300):
                if reason := await refused():
                    break
                await asyncio.sleep(0.1)
            assert "is draining: a-late not started" in reason
            await nc.close()
            assert not store.has_agent("a-late")
            await asyncio.to_thread(hub.cli, "devices", "drain", "pi-garage", "--resume")
            await eventually(lambda: devices(hub)["pi-garage"]["twin"]["draining"] is False, within=30)
            await asyncio.to_thread(hub_cli, "start", "-d", "pi-garage", "-g", "late", "--agent-id", "a-late")
            await eventually(lambda: store.has_agent("a-late"), within=30)
            edge.request_stop()
            await runner
    finally:
        hub.stop()


async def test_a_hub_killed_mid_replay_resumes_and_applies_every_event(tmp_path: Path) -> None:
    from tests.harness.nats import connect as connect_client
    from tests.integration.test_sync import DEVICE, fill_outbox  # the same queue the sync tests use

    # batches of 100: the replay takes a hundred KV records, so "mid-replay" is a wide window even on a
    # loaded machine (with the default 1,024 it is ten records in about 0.4 s)
    small = {"EDGEHUB_HUB__HUB__EVENTS_BATCH": "100"}
    hub = start_hub(tmp_path, "hub-k", env=small)
    store = fill_outbox(tmp_path / "edge.db", 10_000)
    try:
        await asyncio.to_thread(hub.wait_ready)
        server_ref = type("S", (), {"url": hub.url})
        nc = await connect_client(server_ref, "edge", creds=hub.creds())  # type: ignore[arg-type]
        publisher = OutboxPublisher(store, nc.jetstream())
        while await publisher.drain_once():
            pass
        kv = await nc.jetstream().key_value(APPLIED.name)

        async def applied() -> int:
            try:
                return int((await kv.get(kv_key(DEVICE))).value or b"0")
            except KeyNotFoundError:
                return 0
            except Exception:  # the embedded server is down between the kill and the restart
                return -1

        before_kill = 0
        for _ in range(3000):
            if (before_kill := await applied()) >= 1_000:
                break
            await asyncio.sleep(0.002)
        hub.proc.kill()  # kill -9 mid-replay (its embedded nats-server goes down with it)
        hub.proc.wait(timeout=10)
        assert 1_000 <= before_kill < 10_000
        hub = start_hub(tmp_path, "hub-k2", port=int(hub.url.rsplit(":", 1)[1]), env=small)
        await asyncio.to_thread(hub.wait_ready)
        for _ in range(1200):
            if await applied() == 10_000:
                break
            await asyncio.sleep(0.05)
        assert await applied() == 10_000
        records = {str(r["agent_id"]): r for r in agents(hub)}
        last_seqs = {int(str(r["last_event"]).split("/")[2]) for r in records.values()}
        assert last_seqs == set(range(9_991, 10_001))  # every agent's record reached its last event
        await nc.close()
    finally:
        hub.stop()


def test_the_hub_runs_its_embedded_neo4j_and_stops_it_with_itself(tmp_path: Path) -> None:
    hub = start_hub(tmp_path, "hub-l4", neo4j=True)
    try:
        hub.wait_ready(timeout=240)  # the API comes up once the JVM is ready too
        java = subprocess.run(["pgrep", "-f", str(tmp_path / "neo4j")], capture_output=True, text=True)
        assert java.stdout.strip(), "no Neo4j JVM for this hub"
    finally:
        stderr = hub.stop()
    assert hub.proc.returncode == 0, stderr[-2000:]
    text = " ".join(re.sub(r"\S*\.py:\d+", " ", stderr).split())  # rich wraps lines around file:line
    assert "knowledge graph (L4, Neo4j) at bolt://127.0.0.1:" in text
    assert_eventually(
        lambda: not subprocess.run(["pgrep", "-f", str(tmp_path / "neo4j")], capture_output=True).stdout,
        timeout=30,
    )
