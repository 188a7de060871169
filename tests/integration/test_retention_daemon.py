"""Retention in a running edge daemon, replicating to a real nats-server: agents keep running while the
store is pruned, the hub side gets every event exactly once and in order, and what the hub has not
acknowledged stays; ``edgehub edge storage`` shows it all read-only."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from edgehub.edge.app import EdgeDaemon
from edgehub.edge.config import EdgeConfig
from edgehub.llm.fake import FakeBrain
from edgehub.protocol.v1 import agent_pb2, events_pb2
from edgehub.sync import EventApplier, NatsServer
from tests.harness.cli import edgehub
from tests.harness.nats import connect, nats_server  # noqa: F401 - fixture
from tests.harness.wait import eventually

S = agent_pb2
AGENTS = 12


def act(tool: str, **args: object) -> str:
    return json.dumps({"thought": "go", "tool": tool, "args": args})


SCRIPT = [
    act("write_file", path="c.txt", content="hello " * 50),
    act("read_file", path="c.txt"),
    act("finish", answer="ok"),
]


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(("-wal", "-shm")))


def config(tmp_path: Path, url: str | None) -> EdgeConfig:
    return EdgeConfig.model_validate(
        {
            "device": {"id": "dev-r", "data_dir": str(tmp_path / "edge")},
            "tools": {"load_entry_points": False},
            "hub": {"nats_url": url},
            "memory": {"episodic": False},
            "agent": {"max_concurrent": 1},
            "retention": {
                "interval_s": 0.05,
                "batch_rows": 4,
                "outbox": {"max_rows": 6},
                "mind_log": {"max_rows": 9},
                "agents": {"max_rows": 2},
                "intents": {"max_rows": 3},
            },
        }
    )


async def test_agents_keep_running_while_the_store_is_pruned_and_the_hub_gets_every_event_once(
    tmp_path: Path,
    nats_server: NatsServer,  # noqa: F811
) -> None:
    hub_nc = await connect(nats_server, "hub")
    got: list[events_pb2.EdgeEvent] = []

    async def apply(event: events_pb2.EdgeEvent) -> None:
        got.append(event)

    stop = asyncio.Event()
    applier = asyncio.create_task(EventApplier(hub_nc.jetstream(), apply).run(stop))
    async with EdgeDaemon(config(tmp_path, nats_server.url), brain=FakeBrain(SCRIPT * AGENTS)) as daemon:
        store, pruner = daemon.store, daemon.pruner
        runner = asyncio.create_task(daemon.run())
        ids = [daemon.submit(f"goal {i}") for i in range(AGENTS)]
        pruned_while_running: list[int] = []

        def all_ended() -> bool:
            states = [s for s in store.list_agents() if s.agent_id in ids]
            pruned = sum(pruner.pruned.values(), 0)
            if pruned and any(s.status != S.AGENT_STATUS_FINISHED for s in states):
                pruned_while_running.append(pruned)
            return len(got) >= AGENTS * 3 and all(s.status == S.AGENT_STATUS_FINISHED for s in states)

        await eventually(all_ended, within=120, what="every agent to finish and its events to reach the hub")

        def pruned_to_limits() -> bool:  # the hub's acks reach the outbox after the hub got the events
            return (
                store.retention_totals("agents").rows <= 2
                and store.retention_totals("outbox").rows <= 6
                and store.retention_totals("mind_log").rows <= 9
            )

        await eventually(pruned_to_limits, within=30, what="pruning to the limits")
        daemon.request_stop()
        await runner
        assert pruned_while_running, "nothing was pruned while agents ran"
        assert store.outbox_depth() == 0
        assert store.retention_totals("outbox").rows <= 6
        assert store.retention_totals("mind_log").rows <= 9
        assert len(store.list_agents()) <= 2
        assert pruner.pruned["outbox"] > 0
        assert pruner.pruned["agents"] >= AGENTS - 2
    stop.set()
    await applier
    assert [e.seq for e in got] == list(range(1, len(got) + 1))  # none lost, none twice, in order
    assert len({e.event_id for e in got}) == len(got) == AGENTS * 3  # 3 steps each
    await hub_nc.close()


async def test_offline_nothing_the_hub_has_not_acknowledged_is_pruned_and_storage_shows_it(
    tmp_path: Path,
) -> None:
    cfg = config(tmp_path, None)  # no hub: nothing is ever acknowledged
    async with EdgeDaemon(cfg, brain=FakeBrain(SCRIPT * 3)) as daemon:
        ids = [daemon.submit(f"goal {i}") for i in range(3)]
        await daemon.run(until_idle=True)
        report = await daemon.pruner.prune_once()
        assert report.rows == {}  # every kind is either not acknowledged by the hub or not old enough
        assert {s.agent_id for s in daemon.store.list_agents()} == set(ids)
        depth = daemon.store.outbox_depth()
    data, env = cfg.device.data_dir, {"EDGEHUB_EDGE__DEVICE__ID": "dev-r"}
    before = files(data)
    out = edgehub("edge", "storage", "--json", data_dir=data, env=env)
    assert out.returncode == 0, out.stderr
    assert files(data) == before  # read-only: nothing created (SQLite's -wal and -shm aside, docs/cli.md)
    shown = json.loads(out.stdout)
    kinds = {k["kind"]: k for k in shown["kinds"]}
    assert kinds["outbox"]["rows"] == depth
    assert kinds["outbox"]["prunable_rows"] == 0
    assert kinds["agents"]["rows"] == 3  # over max_rows = 2, but their events never reached a hub
    assert kinds["agents"]["prunable_rows"] == 0
    assert kinds["mind_log"]["rows"] == 9
    assert kinds["mind_log"]["prunable_rows"] == 0
    assert shown["files"]["auto_vacuum"] == "incremental"
    assert shown["files"]["db_bytes"] > 0
    table = edgehub("edge", "storage", data_dir=data, env={**env, "COLUMNS": "200"}).stdout
    assert "mind_log" in table
    assert "auto_vacuum incremental" in table
    empty = tmp_path / "none"
    nothing = edgehub("edge", "storage", data_dir=empty)
    assert "no store on this device yet" in nothing.stderr
    assert not empty.exists()
