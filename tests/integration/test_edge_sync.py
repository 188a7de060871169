"""An edge daemon replicating to a real nats-server: its agent's events reach the hub side in order,
PII-masked; with the hub unreachable it keeps working and delivers everything once NATS is back."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from edgehub.edge.app import EdgeDaemon
from edgehub.edge.config import EdgeConfig
from edgehub.llm.fake import FakeBrain
from edgehub.protocol.v1 import events_pb2
from edgehub.sync import EventApplier, NatsServer, free_port
from tests.harness.nats import connect, nats_server  # noqa: F401 - fixture
from tests.harness.wait import eventually


def act(tool: str, thought: str = "go", **args: object) -> str:
    return json.dumps({"thought": thought, "tool": tool, "args": args})


SCRIPT = [
    act("write_file", thought="Save the contact ana@example.com", path="c.txt", content="ana@example.com"),
    act("read_file", path="c.txt"),
    act("finish", answer="saved"),
]


def config(tmp_path: Path, url: str) -> EdgeConfig:
    """Step events only: L3 episodes (replicated too, by default) are counted in test_consolidation."""
    return EdgeConfig.model_validate(
        {
            "device": {"id": "dev-7", "data_dir": str(tmp_path / "edge")},
            "tools": {"load_entry_points": False},
            "hub": {"nats_url": url},
            "memory": {"replicate": False},
        }
    )


async def test_an_agents_events_reach_the_hub_in_order_and_masked(
    tmp_path: Path,
    nats_server: NatsServer,  # noqa: F811
) -> None:
    hub_nc = await connect(nats_server, "hub")
    got: list[events_pb2.EdgeEvent] = []

    async def apply(event: events_pb2.EdgeEvent) -> None:
        got.append(event)

    stop = asyncio.Event()
    applier = asyncio.create_task(EventApplier(hub_nc.jetstream(), apply).run(stop))
    async with EdgeDaemon(config(tmp_path, nats_server.url), brain=FakeBrain(SCRIPT)) as daemon:
        agent_id = daemon.submit("save a contact")
        await daemon.run(until_idle=True)
        assert daemon.store is not None
        local = daemon.store.mind_log(agent_id)
    await eventually(lambda: len(got) == len(local), within=30)
    stop.set()
    await applier
    assert [e.seq for e in got] == list(range(1, len(local) + 1))
    assert [e.step.event_id for e in got] == [e.event_id for e in local]
    assert "ana@example.com" in local[0].thought  # the device keeps the original
    sent = got[0].step
    assert "ana@example.com" not in sent.thought + sent.action.args_json + got[1].step.observation.output
    assert "<EMAIL_" in sent.thought
    await hub_nc.close()


async def test_an_edge_works_offline_and_delivers_everything_when_nats_comes_up(tmp_path: Path) -> None:
    port = free_port()
    cfg = config(tmp_path, f"nats://127.0.0.1:{port}")
    async with EdgeDaemon(cfg, brain=FakeBrain(SCRIPT * 3)) as daemon:
        runner = asyncio.create_task(daemon.run())
        ids = [daemon.submit(f"goal {i}") for i in range(3)]
        store = daemon.store
        assert store is not None
        await eventually(lambda: all(store.load_agent(i).status == 3 for i in ids), within=30)
        expected = len([e for i in ids for e in store.mind_log(i)])
        assert store.outbox_depth() == expected  # nothing could be sent, nothing was dropped
        server = await NatsServer.start(tmp_path / "nats", port=port)  # the hub side appears
        hub_nc = await connect(server, "hub")
        got: list[events_pb2.EdgeEvent] = []

        async def apply(event: events_pb2.EdgeEvent) -> None:
            got.append(event)

        stop = asyncio.Event()
        applier = asyncio.create_task(EventApplier(hub_nc.jetstream(), apply).run(stop))
        await eventually(lambda: store.outbox_depth() == 0, within=60, what="the outbox to drain")
        await eventually(lambda: len(got) == expected, within=30)
        daemon.request_stop()
        await runner
        stop.set()
        await applier
    assert [e.seq for e in got] == list(range(1, len(got) + 1))
    assert {e.agent_id for e in got} == set(ids)
    await hub_nc.close()
    await server.stop()
