"""Escalation end to end: edge agents (the real daemon and its real store and policy) ask the hub's model
through a real nats-server, answered by the hub's real EscalationService; the hub's brain is scripted
here (``FakeBrain``: what is tested is the path and the fairness, not the model's answer), except in
the one test marked ``model``.

(a) a low-confidence step is escalated and the hub's answer is the action executed; (b) with the hub
unreachable (no server, or no hub serving) the agent goes on with its own model's action and its
mind-log says so; (c) a device cannot ask in another device's name (subject permissions), and asking in
its own name with its credentials works."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import nkeys
import pytest
from nats.aio.client import Client, RawCredentials
from prometheus_client import CollectorRegistry

from edgehub.edge.agent.loop import TERMINAL
from edgehub.edge.app import EdgeDaemon
from edgehub.edge.config import EdgeConfig
from edgehub.edge.config import EscalationConfig as EdgeEscalation
from edgehub.edge.uplink.escalation import EscalationClient
from edgehub.hub.config import EscalationConfig, PlannerConfig
from edgehub.hub.escalation import EscalationService
from edgehub.hub.hubmodel import HubModel
from edgehub.llm.fake import FakeBrain
from edgehub.protocol import subjects
from edgehub.protocol.v1 import agent_pb2, models_pb2
from edgehub.sync import NatsServer
from edgehub.sync.auth import Trust, creds_text, inbox_prefix, keypair, new_seed, public_key
from edgehub.sync.escalation import ESCALATION_VERSION
from edgehub.sync.server import free_port
from tests.harness.wait import eventually

S = agent_pb2
M = models_pb2
EDGE_ACTION = '{"thought": "mine", "tool": "write_file", "args": {"path": "out.txt", "content": "edge"}}'
HUB_ACTION = '{"thought": "the hub", "tool": "write_file", "args": {"path": "out.txt", "content": "hub"}}'
FINISH = '{"thought": "done", "tool": "finish", "args": {"answer": "written"}}'


def hub_brain() -> FakeBrain:
    """The hub's scripted model: its own write, then finish."""
    return FakeBrain([HUB_ACTION, FINISH])


class Hub:
    """A nats-server and the hub's escalation service on it."""

    def __init__(self, server: NatsServer, service: EscalationService, stop: asyncio.Event) -> None:
        self.server, self.service, self.stop = server, service, stop


async def start_hub(
    folder: Path, brain: FakeBrain, trust: Trust | None = None, **cfg: int
) -> tuple[Hub, Client, asyncio.Task[None]]:
    auth = trust.server_config() if trust is not None else ""
    server = await NatsServer.start(folder / "nats", port=free_port(), auth=auth)
    creds = RawCredentials(trust.hub_creds("t")) if trust is not None else None
    nc = await nats.connect(server.url, user_credentials=creds)
    stop = asyncio.Event()
    service = EscalationService(nc, HubModel(PlannerConfig(), brain=brain), EscalationConfig(**cfg),
                                metrics=CollectorRegistry())  # fmt: skip
    serving = asyncio.create_task(service.run(stop))
    await nc.flush()
    await asyncio.sleep(0.1)  # the subscription reaches the server
    return Hub(server, service, stop), nc, serving


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    h, nc, serving = await start_hub(tmp_path, hub_brain())
    yield h
    h.stop.set()
    await serving
    await nc.close()
    await h.server.stop()


def edge_config(tmp_path: Path, url: str, timeout_s: float = 5.0) -> EdgeConfig:
    return EdgeConfig.model_validate(
        {
            "device": {"id": "dev-1", "data_dir": str(tmp_path / "edge")},
            "hub": {"nats_url": url},
            "sandbox": {"mode": "off"},
            "memory": {"episodic": False},
            "agent": {"guide": False},
            "escalation": {"enabled": True, "min_confidence": 0.2, "timeout_s": timeout_s},
        }
    )


def counted(counter: object, **labels: str) -> float:
    for metric in counter.collect():  # type: ignore[attr-defined]
        for s in metric.samples:
            if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


async def run_agent(
    cfg: EdgeConfig, script: list[str], confidence: float, *, connected: bool = True
) -> tuple[agent_pb2.AgentState, list[agent_pb2.StepEvent], EdgeDaemon]:
    """Run the daemon, wait for its hub link (``connected``), run one agent to its end."""
    async with EdgeDaemon(cfg, brain=FakeBrain(script, confidence=lambda _: confidence)) as daemon:
        running = asyncio.create_task(daemon.run())
        try:
            hub = daemon.parts.hub
            assert hub is not None
            if connected:
                await eventually(lambda: hub.link.nc is not None and hub.link.nc.is_connected, within=20)
            agent = daemon.submit("write out.txt")
            assert daemon.store is not None
            store = daemon.store
            await eventually(lambda: store.load_agent(agent).status in TERMINAL, within=60)
        finally:
            daemon.request_stop()
            await asyncio.wait_for(running, 30)
        return store.load_agent(agent), store.mind_log(agent), daemon


async def test_a_low_confidence_step_runs_the_hubs_action(tmp_path: Path, hub: Hub) -> None:
    state, log, daemon = await run_agent(edge_config(tmp_path, hub.server.url), [EDGE_ACTION, FINISH], 0.05)
    assert state.status == S.AGENT_STATUS_FINISHED, state
    assert (tmp_path / "edge" / "workspaces" / state.agent_id / "out.txt").read_text() == "hub"
    assert json.loads(log[0].action.args_json)["content"] == "hub"
    assert log[0].detail.startswith(
        "escalated (confidence, confidence 0.050): the hub's model fake chose write_file"
    )
    assert state.usage.escalated_tokens > 0
    client = daemon.parts.hub.escalation  # type: ignore[union-attr]
    assert client is not None
    assert counted(client.metrics.asked, reason="confidence", outcome="answered") == 2
    assert counted(hub.service.metrics.requests, outcome="answered") == 2


async def test_with_no_hub_serving_the_agent_goes_on_with_its_own_action(tmp_path: Path, hub: Hub) -> None:
    hub.stop.set()  # the hub stops answering; NATS itself is up
    await asyncio.sleep(0.2)
    started = time.monotonic()
    state, log, _ = await run_agent(edge_config(tmp_path, hub.server.url), [EDGE_ACTION, FINISH], 0.05)
    assert state.status == S.AGENT_STATUS_FINISHED, state
    assert (tmp_path / "edge" / "workspaces" / state.agent_id / "out.txt").read_text() == "edge"
    assert log[0].detail.startswith(
        "escalation failed (confidence, confidence 0.050): the hub is unreachable"
    )
    assert "the device's own action stands" in log[0].detail
    assert time.monotonic() - started < 20


async def test_with_no_nats_at_all_the_agent_goes_on_at_once(tmp_path: Path) -> None:
    cfg = edge_config(tmp_path, f"nats://127.0.0.1:{free_port()}")
    started = time.monotonic()
    state, log, _ = await run_agent(cfg, [EDGE_ACTION, FINISH], 0.05, connected=False)
    assert state.status == S.AGENT_STATUS_FINISHED, state
    assert (tmp_path / "edge" / "workspaces" / state.agent_id / "out.txt").read_text() == "edge"
    assert log[0].detail.startswith(
        "escalation failed (confidence, confidence 0.050): no connection to the hub"
    )
    assert time.monotonic() - started < 20


async def test_a_slow_hub_times_out_and_the_devices_action_stands(tmp_path: Path) -> None:
    class Slow(FakeBrain):
        def complete(self, *a: object, **kw: object):  # type: ignore[no-untyped-def]
            time.sleep(2.0)
            return super().complete(*a, **kw)  # type: ignore[arg-type]

    h, nc, serving = await start_hub(tmp_path, Slow(lambda p: HUB_ACTION))
    try:
        cfg = edge_config(tmp_path, h.server.url, timeout_s=0.5)
        state, log, _ = await run_agent(cfg, [EDGE_ACTION, FINISH], 0.05)
    finally:
        h.stop.set()
        await serving
        await nc.close()
        await h.server.stop()
    assert (tmp_path / "edge" / "workspaces" / state.agent_id / "out.txt").read_text() == "edge"
    assert "no answer from the hub within 0.5 s" in log[0].detail


# (c) credentials -------------------------------------------------------------------------------------
def device_creds(trust: Trust, device_id: str) -> RawCredentials:
    seed = new_seed(nkeys.PREFIX_BYTE_USER)
    return RawCredentials(creds_text(trust.device_jwt(device_id, public_key(keypair(seed))), seed))


async def device(url: str, trust: Trust, device_id: str) -> Client:
    return await nats.connect(url, user_credentials=device_creds(trust, device_id),
                              inbox_prefix=inbox_prefix(device_id))  # fmt: skip


async def test_a_device_asks_with_its_credentials_and_cannot_ask_in_anothers_name(tmp_path: Path) -> None:
    trust = Trust.load_or_create(tmp_path / "trust")
    h, nc, serving = await start_hub(tmp_path, hub_brain(), trust)
    dev = await device(h.server.url, trust, "dev-1")
    try:
        client = EscalationClient(EdgeEscalation(enabled=True, timeout_s=5), "dev-1", lambda: dev)
        answer = await client.ask(agent_id="a-1", step=0, reason="confidence", prompt="Step 0: write",
                                  schema={"type": "object"}, max_tokens=64, confidence=0.1)  # fmt: skip
        assert not isinstance(answer, str), answer
        assert answer.source == "hub"
        assert json.loads(answer.text)["args"]["content"] == "hub"
        again = await client.ask(agent_id="a-1", step=0, reason="confidence", prompt="Step 0: write",
                                 schema={"type": "object"}, max_tokens=64, confidence=0.1)  # fmt: skip
        assert not isinstance(again, str)
        assert again.source == "device cache"
        request = M.EscalateRequest(
            schema_version=ESCALATION_VERSION, agent_id="a-1", prompt="p", max_tokens=8
        )
        with pytest.raises(nats.errors.Error):  # the server refuses the publish: no responder answers it
            await dev.request(subjects.escalation("dev-2"), request.SerializeToString(), timeout=1.0)
        assert counted(h.service.metrics.requests, outcome="answered") == 1
    finally:
        await dev.close()
        h.stop.set()
        await serving
        await nc.close()
        await h.server.stop()


async def test_a_flooding_device_gets_busy_and_does_not_starve_another(tmp_path: Path) -> None:
    """dev-flood sends 12 requests at once into a per-device queue of 2; dev-calm's one request is
    answered before the flood's queued ones, and the overflow is refused "busy" at once."""

    class Slow(FakeBrain):
        def complete(self, *a: object, **kw: object):  # type: ignore[no-untyped-def]
            time.sleep(0.2)
            return super().complete(*a, **kw)  # type: ignore[arg-type]

    brain = Slow(lambda p: json.dumps({"for": p}))
    h, nc, serving = await start_hub(tmp_path, brain, queue_per_device=2)
    try:

        async def ask(device_id: str, n: int) -> models_pb2.EscalateReply:
            req = M.EscalateRequest(
                schema_version=ESCALATION_VERSION, agent_id="a", prompt=f"{device_id} {n}", max_tokens=8,
                deadline_ms=20_000,
            )  # fmt: skip
            msg = await nc.request(subjects.escalation(device_id), req.SerializeToString(), timeout=20)
            return M.EscalateReply.FromString(msg.data)

        flood = [asyncio.create_task(ask("dev-flood", n)) for n in range(12)]
        await asyncio.sleep(0.05)
        calm = await ask("dev-calm", 0)
        replies = await asyncio.gather(*flood)
    finally:
        h.stop.set()
        await serving
        await nc.close()
        await h.server.stop()
    assert calm.error == ""
    assert json.loads(calm.text)["for"] == "dev-calm 0"
    answered = [r for r in replies if not r.error]
    busy = [r for r in replies if r.error.startswith("busy")]
    assert len(answered) + len(busy) == 12
    assert len(busy) >= 8
    assert brain.prompts.index("dev-calm 0") <= 2  # served within the first round, not after the flood


@pytest.mark.model
async def test_the_hubs_real_model_answers_an_escalated_action_and_caches_it(tmp_path: Path) -> None:
    """The hub's own model (loaded at the first request, as in the daemon) writes a grammar-valid action
    for an edge's prompt; the same step again is answered from the hub's cache."""
    server = await NatsServer.start(tmp_path / "nats", port=free_port())
    nc = await nats.connect(server.url)
    stop = asyncio.Event()
    model = HubModel(PlannerConfig(n_ctx=2048, n_threads=2))
    service = EscalationService(nc, model, EscalationConfig(), metrics=CollectorRegistry())
    serving = asyncio.create_task(service.run(stop))
    await nc.flush()
    schema = {"anyOf": [{"type": "object", "properties": {"thought": {"type": "string", "maxLength": 60},
              "tool": {"const": name}}, "required": ["thought", "tool"], "additionalProperties": False}
              for name in ("read_file", "finish")]}  # fmt: skip
    client = EscalationClient(EdgeEscalation(enabled=True, timeout_s=120), "dev-1", lambda: nc)
    ask = {"agent_id": "a-1", "step": 0, "reason": "confidence", "max_tokens": 48, "confidence": 0.01}
    prompt = "The agent answers with one JSON action.\nGoal: read notes.txt\nStep 1 action: "
    try:
        first = await client.ask(prompt=prompt, schema=schema, **ask)  # type: ignore[arg-type]
        client.cache = type(client.cache)(8)  # the device forgets: the hub's cache must answer
        second = await client.ask(prompt=prompt, schema=schema, **ask)  # type: ignore[arg-type]
    finally:
        stop.set()
        await serving
        model.close()
        await nc.close()
        await server.stop()
    assert not isinstance(first, str), first
    assert json.loads(first.text)["tool"] in ("read_file", "finish")
    assert first.source == "hub"
    assert first.tokens > 0
    assert isinstance(model.loaded, type(None))  # closed
    assert not isinstance(second, str)
    assert second.source == "hub cache"
    assert second.text == first.text
    assert second.tokens == 0
