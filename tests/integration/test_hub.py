"""The hub daemon as a subprocess with its embedded nats-server, and an edge daemon reporting to it:
the agent appears in the fleet registry with its device and final status; SIGTERM stops the hub."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from nats.js.errors import KeyNotFoundError

from edgehub.edge.app import EdgeDaemon
from edgehub.edge.config import EdgeConfig
from edgehub.edge.llm.fake import FakeBrain
from edgehub.protocol.v1 import agent_pb2
from edgehub.sync import OutboxPublisher, free_port, kv_key
from edgehub.sync.streams import APPLIED
from tests.harness.hub import EDGEHUB, start_hub
from tests.harness.wait import assert_eventually, eventually

S = agent_pb2


def act(tool: str, **args: object) -> str:
    return json.dumps({"thought": "go", "tool": tool, "args": args})


def registry(what: str, api: str) -> list[dict[str, object]]:
    """``edgehub agents list`` / ``edgehub devices list`` through the hub's gRPC API."""
    done = subprocess.run([*EDGEHUB, what, "list", "--api", api, "--json"], capture_output=True, text=True)
    return [json.loads(line) for line in done.stdout.splitlines()] if done.returncode == 0 else []


def agents(api: str) -> list[dict[str, object]]:
    return registry("agents", api)


def devices(api: str) -> dict[str, dict[str, object]]:
    return {str(d["device_id"]): d for d in registry("devices", api)}


def check_api_errors_health_and_reflection(api: str) -> None:
    missing = subprocess.run(
        [*EDGEHUB, "agents", "get", "nope", "--api", api], capture_output=True, text=True
    )
    assert missing.returncode == 1
    assert "not_found: no agent 'nope'" in missing.stderr
    bad = subprocess.run(
        [*EDGEHUB, "agents", "start", "-d", "x", "-g", " ", "--api", api], capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert "invalid_argument" in bad.stderr
    down = subprocess.run(
        [*EDGEHUB, "devices", "list", "--api", "127.0.0.1:1"], capture_output=True, text=True
    )
    assert down.returncode == 2
    assert "cannot reach the hub API at 127.0.0.1:1" in down.stderr
    with grpc.insecure_channel(api) as channel:
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
    hub, url, api = start_hub(tmp_path, metrics_port=hub_metrics)
    try:
        assert_eventually(lambda: (tmp_path / "nats" / "nats.conf").exists(), timeout=30)
        cfg = EdgeConfig.model_validate(
            {
                "device": {"id": "pi-kitchen", "data_dir": str(tmp_path / "edge")},
                "tools": {"load_entry_points": False},
                "hub": {"nats_url": url},
                "metrics": {"port": 0},
            }
        )
        script = [act("write_file", path="a.txt", content="x"), act("finish", answer="done")]
        async with EdgeDaemon(cfg, brain=FakeBrain(script)) as edge:
            runner = asyncio.create_task(edge.run())
            twin = await eventually(lambda: devices(api).get("pi-kitchen"), within=30)
            assert twin["online"] is True
            assert twin["version"] == "0.1.0"
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
            lambda: devices(api)["pi-kitchen"]["online"] is False and devices(api), within=30
        )
        assert gone["pi-kitchen"]["state"] == "stopped"
        records = await eventually(
            lambda: [r for r in agents(api) if r["agent_id"] == agent_id and r["status"] == "finished"],
            within=60,
        )
        assert records[0]["device_id"] == "pi-kitchen"
        assert records[0]["step"] == 1
        trace = await asyncio.to_thread(
            subprocess.run,
            [*EDGEHUB, "agents", "trace", agent_id, "--api", api, "--json"],
            capture_output=True,
            text=True,
        )
        assert [json.loads(line)["action"]["tool"] for line in trace.stdout.splitlines()] == [
            "write_file",
            "finish",
        ]
        await asyncio.to_thread(check_api_errors_health_and_reflection, api)
        hub_text = await asyncio.to_thread(scrape, hub_metrics)
        applied = [
            line for line in hub_text.splitlines() if line.startswith("edgehub_hub_events_applied_total")
        ]
        assert applied
        assert float(applied[0].split()[-1]) >= 2
    finally:
        hub.send_signal(signal.SIGTERM)
        _, stderr = hub.communicate(timeout=30)
    assert hub.returncode == 0, stderr[-2000:]
    assert "listening for edges" in stderr


async def test_hub_commands_start_stop_and_approve_agents_on_an_edge(tmp_path: Path) -> None:
    hub, url, api = start_hub(tmp_path, "hub-cmd")
    policy = tmp_path / "policy.toml"
    policy.write_text(
        'version = 1\n[[rules]]\nid = "ask"\ntools = ["write_file"]\neffect = "needs_approval"\n'
        '[[rules]]\nid = "rest"\ntools = ["*"]\neffect = "allow"\n'
    )
    cfg = EdgeConfig.model_validate(
        {
            "device": {"id": "pi-garage", "data_dir": str(tmp_path / "edge")},
            "tools": {"load_entry_points": False},
            "hub": {"nats_url": url},
            "safety": {"policy": str(policy), "stuck_warnings": 100, "failing_repeats": 100},
        }
    )

    def brain(prompt: str) -> str:
        if "Goal: loop" in prompt:
            return act("run_command", command="sleep 1")
        if prompt.endswith("Step 1 action: "):  # the report goal first writes (needs approval)
            return act("write_file", path="report.txt", content="ok")
        return act("finish", answer="ok")

    try:
        assert_eventually(lambda: (tmp_path / "nats" / "nats.conf").exists(), timeout=30)
        async with EdgeDaemon(cfg, brain=FakeBrain(brain)) as edge:
            runner = asyncio.create_task(edge.run())
            store = edge.store
            assert store is not None

            def hub_cli(*args: str) -> subprocess.CompletedProcess[str]:  # the operator's CLI on the gRPC API
                return subprocess.run(
                    [*EDGEHUB, "agents", *args, "--api", api], capture_output=True, text=True
                )

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
                hub_cli, "decide", "a-rep/0", "-d", "pi-garage", "--approve", "--by", "ops-ana"
            )
            assert decided.returncode == 0, decided.stderr
            await eventually(lambda: store.load_agent("a-rep").status == S.AGENT_STATUS_FINISHED, within=30)
            approval = store.get_approval("a-rep/0")
            assert approval is not None
            assert approval.decided_by == "ops-ana"
            records = await eventually(
                lambda: (
                    {r["agent_id"]: r["status"] for r in agents(api)}.get("a-rep") == "finished"
                    and agents(api)
                ),
                within=30,
            )
            assert {r["agent_id"]: r["status"] for r in records}["a-loop"] == "stopped"
            edge.request_stop()
            await runner
    finally:
        hub.send_signal(signal.SIGTERM)
        hub.communicate(timeout=30)


async def test_a_hub_killed_mid_replay_resumes_and_applies_every_event(tmp_path: Path) -> None:
    from tests.harness.nats import connect as connect_client
    from tests.integration.test_sync import DEVICE, fill_outbox  # the same queue the sync tests use

    hub, url, api = start_hub(tmp_path, "hub-k")
    store = fill_outbox(tmp_path / "edge.db", 10_000)
    try:
        assert_eventually(lambda: (tmp_path / "nats" / "nats.conf").exists(), timeout=30)
        server_ref = type("S", (), {"url": url})
        nc = await connect_client(server_ref, "edge")  # type: ignore[arg-type]
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

        for _ in range(600):
            if await applied() >= 1_000:
                break
            await asyncio.sleep(0.01)
        before_kill = await applied()
        hub.kill()  # kill -9 mid-replay (its embedded nats-server goes down with it)
        hub.wait(timeout=10)
        assert 1_000 <= before_kill < 10_000
        hub, _, api = start_hub(tmp_path, "hub-k2", port=int(url.rsplit(":", 1)[1]))
        for _ in range(1200):
            if await applied() == 10_000:
                break
            await asyncio.sleep(0.05)
        assert await applied() == 10_000
        records = {str(r["agent_id"]): r for r in agents(api)}
        last_seqs = {int(str(r["last_event"]).split("/")[2]) for r in records.values()}
        assert last_seqs == set(range(9_991, 10_001))  # every agent's record reached its last event
        await nc.close()
    finally:
        hub.send_signal(signal.SIGTERM)
        hub.communicate(timeout=30)
