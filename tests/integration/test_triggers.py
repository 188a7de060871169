"""Triggers in a running edge daemon against real servers the tests start: Mosquitto, a pymodbus Modbus
TCP server, the daemon's own webhook, nats-server for the hub. The agents think with ``FakeBrain``
(the model is not the point here: what starts them is)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from edgehub.edge.app import EdgeDaemon
from edgehub.edge.config import EdgeConfig
from edgehub.edge.triggers.mqtt import MqttSource
from edgehub.llm.fake import FakeBrain
from edgehub.protocol.v1 import agent_pb2, events_pb2
from edgehub.sync import EventApplier, NatsServer, free_port
from tests.harness.cli import edgehub
from tests.harness.nats import connect
from tests.harness.site import Broker, ModbusSite, modbus_server, mosquitto  # noqa: F401 - fixtures
from tests.harness.wait import eventually

FINISHED = agent_pb2.AGENT_STATUS_FINISHED


def finishing_brain() -> FakeBrain:
    """Every agent looks once, then finishes."""
    return FakeBrain(
        lambda _prompt: json.dumps({"thought": "checked", "tool": "finish", "args": {"answer": "ok"}})
    )


def echoing_brain() -> FakeBrain:
    """Every agent repeats the goal the trigger filled in (as its prompt shows it) and finishes."""

    def act(prompt: str) -> str:
        goal = re.findall(r"Inspect line [^\n]*", prompt)[-1]
        return json.dumps({"thought": f"My goal: {goal}", "tool": "finish", "args": {"answer": "ok"}})

    return FakeBrain(act)


def config(tmp_path: Path, *triggers: dict[str, Any], **sections: Any) -> EdgeConfig:
    return EdgeConfig.model_validate(
        {
            "device": {"id": "dev-t", "data_dir": str(tmp_path / "edge")},
            "tools": {"load_entry_points": False},
            "memory": {"episodic": False, "replicate": False},
            "metrics": {"port": 0},
            "triggers": list(triggers),
            **sections,
        }
    )


def scrape(port: int | None, trigger: str, outcome: str) -> float:
    """``edgehub_edge_trigger_events_total`` for one trigger and outcome, read from /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        labels = f'trigger="{trigger}"' in line and f'outcome="{outcome}"' in line
        if line.startswith("edgehub_edge_trigger_events_total{") and labels:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def agents(daemon: EdgeDaemon) -> list[agent_pb2.AgentState]:
    return daemon.store.list_agents()


async def running(daemon: EdgeDaemon) -> asyncio.Task[None]:
    task = asyncio.create_task(daemon.run())
    await asyncio.sleep(0)
    return task


async def wait_source(daemon: EdgeDaemon, trigger: str, ready: Callable[[Any], bool]) -> None:
    runner = daemon.parts.triggers
    assert runner is not None
    await eventually(lambda: trigger in runner.sources and ready(runner.sources[trigger]), within=10)


async def test_a_storm_of_1000_mqtt_alarms_in_10_s_starts_one_agent(
    tmp_path: Path,
    mosquitto: Broker,  # noqa: F811
) -> None:
    alarm = {
        "id": "pressure",
        "kind": "mqtt",
        "broker": mosquitto.url,
        "topic": "plant/+/pressure",
        "goal": "Pressure alarm on $topic: ${payload.bar} bar. Check the line.",
        "condition": {"field": "bar", "op": ">", "value": 8.5},
        "dedupe_key": "${payload.alarm}",
        "dedupe_s": 600,
    }
    async with EdgeDaemon(config(tmp_path, alarm), brain=finishing_brain()) as daemon:
        task = await running(daemon)
        await wait_source(daemon, "pressure", lambda s: isinstance(s, MqttSource) and s.connected)
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
            loop = asyncio.get_running_loop()
            start = loop.time()
            for i in range(1000):
                body = {"alarm": "P-101", "bar": 9.0 + (i % 7) / 10}
                await pub.publish("plant/line3/pressure", json.dumps(body), qos=1)
                await asyncio.sleep(max(0.0, start + (i + 1) * 0.01 - loop.time()))  # 1,000 over 10 s
            sent_in = loop.time() - start
        await eventually(lambda: scrape(daemon.metrics_port, "pressure", "deduped") == 999, within=20)
        await eventually(lambda: all(a.status == FINISHED for a in agents(daemon)), within=20)
        daemon.request_stop()
        await task
        started = agents(daemon)
        records = daemon.store.trigger_events("pressure", limit=2000)
    assert sent_in < 11
    assert len(started) == 1
    assert started[0].goal == "Pressure alarm on plant/line3/pressure: 9.0 bar. Check the line."
    assert [r.outcome for r in records].count("started") == 1
    assert len(records) == 1000
    assert records[-1].agent_id == started[0].agent_id


async def test_a_malformed_mqtt_payload_is_counted_and_ignored(
    tmp_path: Path,
    mosquitto: Broker,  # noqa: F811
) -> None:
    t = {
        "id": "alarms",
        "kind": "mqtt",
        "broker": mosquitto.url,
        "topic": "alarms",
        "goal": "Handle ${payload.code}",
    }
    async with EdgeDaemon(config(tmp_path, t), brain=finishing_brain()) as daemon:
        task = await running(daemon)
        await wait_source(daemon, "alarms", lambda s: s.connected)
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
            for bad in (b"not json", b"\xff\xfe", b'{"code": '):
                await pub.publish("alarms", bad, qos=1)
            await pub.publish(
                "alarms", json.dumps({"no_code": 1}), qos=1
            )  # JSON, but the goal's field is missing
            await pub.publish("alarms", json.dumps({"code": "E7"}), qos=1)
        await eventually(lambda: len(agents(daemon)) == 1, within=10)
        assert scrape(daemon.metrics_port, "alarms", "bad_payload") == 4
        assert scrape(daemon.metrics_port, "alarms", "started") == 1
        daemon.request_stop()
        await task
        assert agents(daemon)[0].goal == "Handle E7"


async def test_a_modbus_register_crossing_its_limit_starts_one_agent_per_crossing(
    tmp_path: Path,
    modbus_server: ModbusSite,  # noqa: F811
) -> None:
    t = {
        "id": "boiler",
        "kind": "modbus",
        "host": "127.0.0.1",
        "port": modbus_server.port,
        "address": 10,
        "poll_s": 0.05,
        "condition": {"field": "value", "op": ">", "value": 80},
        "goal": "Boiler register ${payload.address} reads ${payload.value}; find out why.",
    }
    async with EdgeDaemon(config(tmp_path, t), brain=finishing_brain()) as daemon:
        task = await running(daemon)
        await modbus_server.set(10, 40)
        await wait_source(daemon, "boiler", lambda s: s.readings >= 3)
        assert agents(daemon) == []
        await modbus_server.set(10, 95)  # the simulated sensor crosses the limit
        await eventually(lambda: len(agents(daemon)) == 1, within=10)
        polls = daemon.parts.triggers.sources["boiler"].readings  # type: ignore[union-attr]
        await wait_source(daemon, "boiler", lambda s: s.readings >= polls + 10)  # it stays high
        assert len(agents(daemon)) == 1
        await modbus_server.set(10, 60)
        await wait_source(daemon, "boiler", lambda s: not s.holding)
        await modbus_server.set(10, 99)  # a second crossing
        await eventually(lambda: len(agents(daemon)) == 2, within=10)
        await eventually(lambda: all(a.status == FINISHED for a in agents(daemon)), within=20)
        daemon.request_stop()
        await task
        goals = sorted(a.goal for a in agents(daemon))
    assert goals == [
        "Boiler register 10 reads 95; find out why.",
        "Boiler register 10 reads 99; find out why.",
    ]


def post(port: int, body: bytes, token: str | None, path: str = "/hook") -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_a_webhook_refuses_a_wrong_token_and_starts_nothing(tmp_path: Path) -> None:
    token = tmp_path / "hook.token"
    token.write_text("s3cret-token-for-the-mes\n")
    port = free_port()
    t = {
        "id": "mes",
        "kind": "webhook",
        "port": port,
        "path": "/hook",
        "token_file": str(token),
        "max_body_bytes": 1024,
        "goal": "Order ${payload.order} is late",
    }
    async with EdgeDaemon(config(tmp_path, t), brain=finishing_brain()) as daemon:
        task = await running(daemon)
        await wait_source(daemon, "mes", lambda s: s.listening.is_set())
        body = json.dumps({"order": "A-17"}).encode()
        assert (await asyncio.to_thread(post, port, body, "wrong"))[0] == 401
        assert (await asyncio.to_thread(post, port, body, None))[0] == 401
        assert (await asyncio.to_thread(post, port, b"x" * 2048, "s3cret-token-for-the-mes"))[0] == 413
        assert (await asyncio.to_thread(post, port, b"{", "s3cret-token-for-the-mes"))[0] == 400
        assert (await asyncio.to_thread(post, port, body, "s3cret-token-for-the-mes", "/other"))[0] == 404
        assert agents(daemon) == []
        status, reply = await asyncio.to_thread(post, port, body, "s3cret-token-for-the-mes")
        assert (status, reply["outcome"]) == (202, "started")
        await eventually(lambda: daemon.store.load_agent(reply["agent_id"]).status == FINISHED, within=10)
        daemon.request_stop()
        await task
        assert [a.goal for a in agents(daemon)] == ["Order A-17 is late"]
    toml = tmp_path / "edge.toml"  # the same trigger, as a site engineer writes it
    toml.write_text(
        f'[device]\nid = "dev-t"\n\n[[triggers]]\nid = "mes"\nkind = "webhook"\nport = {port}\n'
        'path = "/hook"\n'
        f'token_file = "{token}"\ngoal = "Order ${{payload.order}} is late"\n'
    )
    shown = edgehub("edge", "triggers", "--config", str(toml), "--json", data_dir=tmp_path / "edge")
    assert shown.returncode == 0, shown.stderr
    listing = json.loads(shown.stdout)
    assert [(t["id"], t["last"]["agent_id"]) for t in listing["triggers"]] == [("mes", reply["agent_id"])]
    assert [(e["outcome"], e["agent_id"]) for e in listing["events"]] == [("started", reply["agent_id"])]
    wrong = edgehub(
        "edge", "triggers", "--config", str(toml), "--trigger", "nope", data_dir=tmp_path / "edge"
    )
    assert wrong.returncode != 0
    assert "no trigger 'nope' in the config (triggers: mes)" in wrong.stderr
    assert "Traceback" not in wrong.stderr


async def test_a_trigger_fires_offline_and_its_agents_events_reach_the_hub_later(tmp_path: Path) -> None:
    nats_port, hook_port = free_port(), free_port()
    token = tmp_path / "hook.token"
    token.write_text("tok-123456")
    t = {
        "id": "offline",
        "kind": "webhook",
        "port": hook_port,
        "token_file": str(token),
        "goal": "Inspect line ${payload.line}; the operator is ana@example.com",
    }
    cfg = config(tmp_path, t, hub={"nats_url": f"nats://127.0.0.1:{nats_port}"})
    async with EdgeDaemon(cfg, brain=echoing_brain()) as daemon:
        task = await running(daemon)
        await wait_source(daemon, "offline", lambda s: s.listening.is_set())
        status, reply = await asyncio.to_thread(post, hook_port, b'{"line": 3}', "tok-123456", "/")
        assert status == 202
        agent_id = reply["agent_id"]
        store = daemon.store
        await eventually(lambda: store.load_agent(agent_id).status == FINISHED, within=10)
        expected = len(store.mind_log(agent_id))
        assert store.outbox_depth() == expected > 0  # the hub is unreachable: everything waits
        server = await NatsServer.start(tmp_path / "nats", port=nats_port)  # the hub side comes back
        hub_nc = await connect(server, "hub")
        got: list[events_pb2.EdgeEvent] = []

        async def apply(event: events_pb2.EdgeEvent) -> None:
            got.append(event)

        stop = asyncio.Event()
        applier = asyncio.create_task(EventApplier(hub_nc.jetstream(), apply).run(stop))
        await eventually(lambda: len(got) == expected, within=30, what="the agent's events at the hub")
        daemon.request_stop()
        await task
        stop.set()
        await applier
        goal = store.load_agent(agent_id).goal
    assert {e.agent_id for e in got} == {agent_id}
    assert "ana@example.com" in goal  # the device keeps the goal as the event filled it
    sent = "".join(e.step.SerializeToString().decode(errors="replace") for e in got)
    assert "Inspect line 3" in sent  # the agent repeated its goal in a thought ...
    assert "ana@example.com" not in sent  # ... masked before it reached the outbox
    assert "<EMAIL_" in sent
    await hub_nc.close()
    await server.stop()


async def test_a_nats_trigger_starts_an_agent_from_the_hubs_message(tmp_path: Path) -> None:
    server = await NatsServer.start(tmp_path / "nats")
    t = {
        "id": "inspect",
        "kind": "nats",
        "subject": "inspect",
        "goal": "Inspect ${payload.area} ($subject)",
        "dedupe_s": 60,
    }
    cfg = config(tmp_path, t, hub={"nats_url": server.url})
    async with EdgeDaemon(cfg, brain=finishing_brain()) as daemon:
        task = await running(daemon)
        hub_link = daemon.parts.hub
        assert hub_link is not None
        await eventually(lambda: hub_link.link.nc is not None, within=10)
        hub_nc = await connect(server, "hub")
        subject = "edgehub.trigger.dev-t.inspect"
        for _ in range(50):  # until the device has subscribed (the first publishes may find no one)
            await hub_nc.publish(subject, b'{"area": "press 2"}')
            await hub_nc.flush()
            if agents(daemon):
                break
            await asyncio.sleep(0.1)
        await hub_nc.publish(subject, b"{not json")
        await hub_nc.flush()
        await eventually(lambda: scrape(daemon.metrics_port, "inspect", "bad_payload") == 1, within=10)
        daemon.request_stop()
        await task
        goals = [a.goal for a in agents(daemon)]
    await hub_nc.close()
    await server.stop()
    assert goals == ["Inspect press 2 (edgehub.trigger.dev-t.inspect)"]


async def test_a_cron_trigger_fires_on_its_schedule(tmp_path: Path) -> None:
    every_second = {
        "id": "tick",
        "kind": "cron",
        "schedule": "* * * * * *",  # croniter's sixth field: seconds
        "timezone": "Asia/Kolkata",  # no daylight saving: the offset is the same all year
        "goal": "Scheduled inspection at ${payload.scheduled_at}",
    }
    async with EdgeDaemon(config(tmp_path, every_second), brain=finishing_brain()) as daemon:
        task = await running(daemon)
        await eventually(lambda: len(agents(daemon)) >= 2, within=10)
        daemon.request_stop()
        await task
        goals = [a.goal for a in agents(daemon)]
    first, second = goals[0], goals[1]
    assert first.startswith("Scheduled inspection at 20")
    assert first.endswith("+05:30")  # the schedule's zone
    assert first != second


async def test_a_webhook_without_its_token_logs_one_line_and_the_daemon_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    t = {
        "id": "hook",
        "kind": "webhook",
        "port": free_port(),
        "token_file": str(tmp_path / "missing"),
        "goal": "g",
    }
    cfg = config(tmp_path, t)
    with caplog.at_level(logging.ERROR, logger="edgehub.edge.triggers"):
        async with EdgeDaemon(cfg, brain=finishing_brain()) as daemon:
            task = await running(daemon)
            agent_id = daemon.submit("a goal typed by a person")
            await eventually(lambda: daemon.store.load_agent(agent_id).status == FINISHED, within=10)
            daemon.request_stop()
            await task
    lines = [r for r in caplog.records if r.name == "edgehub.edge.triggers"]
    assert [r.getMessage() for r in lines] == [
        f"trigger hook cannot run: trigger hook: no webhook token in {tmp_path / 'missing'}; retrying in 5 s"
    ]
    assert lines[0].exc_info is None
