"""Consolidation end to end (issue 5): two edge daemons' agents remember things about the same pump;
their L3 episodes replicate (PII-masked) over the real nats-server with each device's own credentials to
a hub daemon (subprocess) that keeps them in the session's real Neo4j; an operator runs
``edgehub knowledge consolidate``; the hub's own model (the real Gemma 3 270M GGUF, greedy) abstracts the
cluster into facts with provenance, linked to the episodes of both devices; and each edge prunes
exactly the episodes the run consolidated (one keeping them for its retention, one deleting at once).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from edgehub.edge.app import EdgeDaemon
from edgehub.edge.config import EdgeConfig
from edgehub.hub.knowledge import KnowledgeGraph, Neo4jServer
from edgehub.llm.fake import FakeBrain
from tests.harness.hub import start_hub
from tests.harness.wait import eventually

NOTES = {
    "edge-1": (
        "pump P-3",
        "Pump P-3 in hall 3 reported vibration of 11.2 mm/s, above the 7 mm/s alarm limit.",
    ),
    "edge-2": (
        "pump P-3 repair",
        "Maintenance replaced the bearing on pump P-3; vibration dropped to 2.1 mm/s.",
    ),
}


def act(tool: str, thought: str, **args: object) -> str:
    return json.dumps({"thought": thought, "tool": tool, "args": args})


async def scalar(graph: KnowledgeGraph, query: str, **params: object) -> object:
    records = (await graph.driver.execute_query(query, params, database_=graph.database)).records
    return records[0][0]


@pytest.mark.model
async def test_episodes_from_two_devices_become_facts_with_provenance_and_are_pruned_at_the_edges(
    tmp_path: Path, graph: KnowledgeGraph, neo4j_server: Neo4jServer
) -> None:
    hub = start_hub(
        tmp_path,
        "hub-dream",
        env={
            "EDGEHUB_HUB__NEO4J__ENABLED": "true",
            "EDGEHUB_HUB__NEO4J__URI": neo4j_server.uri,
            "EDGEHUB_HUB__NEO4J__USER": neo4j_server.user,
            "EDGEHUB_HUB__NEO4J__PASSWORD": neo4j_server.password,
            "EDGEHUB_HUB__DREAMER__INTERVAL_S": "0",  # on demand only: the operator runs it below
        },
    )
    daemons: list[EdgeDaemon] = []
    runs: list[asyncio.Task[None]] = []
    try:
        await asyncio.to_thread(hub.wait_ready, 180)
        for device, (key, value) in NOTES.items():
            enrolled = await asyncio.to_thread(hub.enroll, device, tmp_path / device)
            assert enrolled.returncode == 0, enrolled.stderr
            cfg = EdgeConfig.model_validate(
                {
                    "device": {"id": device, "data_dir": str(tmp_path / device)},
                    "tools": {"load_entry_points": False},
                    # edge-1 keeps consolidated episodes (recall skips them), edge-2 deletes at once
                    "memory": {"keep_consolidated_days": 7 if device == "edge-1" else 0},
                }
            )
            script = [
                act("remember", "Note what I saw.", key=key, value=value),
                act("finish", "Noted.", answer="noted"),
            ]
            daemon = EdgeDaemon(cfg, brain=FakeBrain(script))
            await daemon.open()
            daemons.append(daemon)
            daemon.submit("inspect pump P-3 and note what you find")
            runs.append(asyncio.create_task(daemon.run()))

        # every device's episodes reach the graph (the explicit note, its step, the end: 3 each)
        async def episodes_in_graph() -> int:
            return int(await scalar(graph, "MATCH (e:Episode) RETURN count(e)"))  # type: ignore[arg-type]

        for _ in range(600):
            if await episodes_in_graph() >= 6:
                break
            await asyncio.sleep(0.1)
        assert await episodes_in_graph() == 6
        about_p3 = await scalar(graph, "MATCH (e:Episode) WHERE e.text CONTAINS 'P-3' RETURN count(e)")
        assert about_p3 == 4  # the two notes and the two remember steps (the ends say "noted")

        def marked(store: object) -> set[str]:
            rows = store._rows("SELECT key FROM episodes WHERE pruned_by = ?", (run_id,))  # type: ignore[attr-defined]
            return {str(r[0]) for r in rows}

        def keys(store: object) -> set[str]:
            return {str(r[0]) for r in store._rows("SELECT key FROM episodes")}  # type: ignore[attr-defined]

        edge1, edge2 = (d.store for d in daemons)
        assert edge1 is not None
        assert edge2 is not None
        before2 = keys(edge2)
        # the model loads and writes two clusters' facts: minutes on a busy two-core machine
        out = await asyncio.to_thread(hub.cli, "knowledge", "consolidate", "--json", timeout=900)
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        print("consolidation:", report)
        assert report["facts_written"] >= 1, report
        run_id = report["run_id"]

        # the facts carry provenance from the fleet and are linked to episodes of both devices
        sources = await scalar(
            graph,
            "MATCH (f:Fact)-[:ABSTRACTED_FROM]->(e:Episode) RETURN collect(DISTINCT e.device_id)",
        )
        assert sorted(sources) == ["edge-1", "edge-2"]  # type: ignore[arg-type]
        assert await scalar(graph, "MATCH (f:Fact) WHERE f.device_id IN ['edge-1', 'edge-2'] RETURN count(f)")
        pruned = {p["device_id"]: set(p["keys"]) for p in report["prune"]}
        assert set(pruned) == {"edge-1", "edge-2"}

        # each edge prunes exactly the episodes the run consolidated
        assert pruned["edge-2"] <= before2
        await eventually(lambda: marked(edge1) == pruned["edge-1"], within=30, what="edge-1 to prune")
        await eventually(
            lambda: keys(edge2) == before2 - pruned["edge-2"], within=30, what="edge-2 to delete"
        )
        assert edge1.episode_count() == 3 - len(pruned["edge-1"])  # kept, but recall no longer sees them
    finally:
        for daemon in daemons:
            daemon.request_stop()
        await asyncio.gather(*runs, return_exceptions=True)
        for daemon in daemons:
            await daemon.shutdown()
        hub.stop()
