"""Consolidation against the real Neo4j (one server per session), with real MiniLM embeddings of the
episodes, a scripted brain for the logic and the real Gemma 3 270M for what a small model makes of it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest

from edgehub.edge.memory.embed import shared_embedder
from edgehub.hub.api.service import HubService
from edgehub.hub.config import DreamerConfig
from edgehub.hub.knowledge import (
    BatchRejected,
    ConsolidationConflict,
    Dreamer,
    DreamerError,
    DreamerService,
    EpisodeRecord,
    KnowledgeGraph,
    cypher,
)
from edgehub.hub.knowledge.model import validate_fact
from edgehub.hub.services import HubServices
from edgehub.llm.fake import FakeBrain
from edgehub.llm.llama import LlamaBrain
from edgehub.protocol import subjects
from edgehub.protocol.v1 import commands_pb2, hub_pb2
from edgehub.sync import NatsServer
from tests.harness.nats import connect, nats_server  # noqa: F401 - fixture
from tests.harness.wait import eventually
from tests.integration.test_knowledge_graph import count, snapshot

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
NOTES = [  # (device, text): two topics across two devices, and one unrelated episode
    ("edge-1", "Pump P-3 in hall 3 reported vibration of 11.2 mm/s, above the 7 mm/s alarm limit."),
    ("edge-2", "Maintenance replaced the bearing on pump P-3 on Tuesday; vibration dropped to 2.1 mm/s."),
    ("edge-1", "Pump P-3 in hall 3 vibration is back to normal at 2.0 mm/s after the bearing change."),
    ("edge-2", "Conveyor belt C2 stopped twice because the photo sensor at the outfeed was dirty."),
    ("edge-1", "Cleaning the outfeed photo sensor on conveyor C2 fixed the stops."),
    ("edge-2", "The label printer in packing ran out of ribbon; ordered 20 rolls."),
]


def episodes(notes: list[tuple[str, str]] = NOTES, start: datetime = T0) -> list[EpisodeRecord]:
    vectors = shared_embedder().embed([text for _, text in notes])
    return [
        EpisodeRecord(
            device_id=device,
            agent_id=f"agent-{device[-1]}",
            key=f"agent-{device[-1]}/0/{i}/action",
            text=text,
            embedding=tuple(float(x) for x in vectors[i]),
            at=start + timedelta(minutes=i),
            importance=0.5,
            step=i,
        )
        for i, (device, text) in enumerate(notes)
    ]


def facts_json(prompt: str) -> str:
    """A scripted model: the facts a good model would state about the cluster in the prompt."""
    notes = prompt.rsplit("Notes:\n", 1)[1]
    if "P-3" in notes:
        return json.dumps(
            {
                "facts": [
                    {"subject": "Pump P-3", "predicate": "located_in", "object": "hall 3"},
                    {"subject": "pump P-3", "predicate": "vibration_alarm_limit", "value": "7 mm/s"},
                    {"subject": "Robot R-1", "predicate": "located_in", "object": "hall 5"},  # copied
                ]
            }
        )
    if "C2" in notes:
        return json.dumps(
            {"facts": [{"subject": "conveyor C2", "predicate": "has_part", "object": "sensor"}]}
        )
    return json.dumps({"facts": []})


def dreamer(graph: KnowledgeGraph, script: Callable[[str], str] = facts_json, **kw: object) -> Dreamer:
    return Dreamer(graph, FakeBrain(script), similarity=0.5, clock=lambda: T0 + timedelta(hours=1), **kw)  # type: ignore[arg-type]


async def test_adding_episodes_is_idempotent_and_they_round_trip(graph: KnowledgeGraph) -> None:
    eps = episodes()
    assert await graph.add_episodes(eps[:4]) == 4
    assert await graph.add_episodes(eps[:4]) == 0
    assert await graph.add_episodes([eps[4], eps[4], eps[0], eps[5]]) == 2
    pending = await graph.pending_episodes(100)
    assert pending == eps  # oldest first; text, time, and every float of the embedding exact
    assert await graph.pending_episodes(2) == eps[:2]


async def test_a_run_writes_facts_with_provenance_and_links_and_marks_the_episodes(
    graph: KnowledgeGraph,
) -> None:
    eps = episodes()
    await graph.add_episodes(eps)
    report = await dreamer(graph).run()

    assert report.clusters == 2
    assert report.facts_written == 3
    assert report.episodes_consolidated == 5
    assert report.episodes_considered == 6
    assert any("Robot R-1" in why and "does not occur" in why for _, why in report.rejected)
    assert report.prune == {
        "edge-1": tuple(sorted(e.key for e in eps if e.device_id == "edge-1" and "label" not in e.text)),
        "edge-2": tuple(sorted(e.key for e in eps[:4] if e.device_id == "edge-2")),
    }
    assert await graph.episodes_to_prune(report.run_id) == {d: list(k) for d, k in report.prune.items()}

    located = await graph.facts_about("pump-p-3", predicate="located_in")
    assert [f.fact.object for f in located] == ["hall-3"]
    fact = located[0].fact
    pump_cluster = [e for e in eps if "P-3" in e.text]
    centre = next(e for e in pump_cluster if e.id == fact.provenance.episode_id)
    assert (fact.provenance.device_id, fact.provenance.agent_id) == (centre.device_id, centre.agent_id)
    assert fact.valid_from == T0  # the cluster's earliest episode
    assert not fact.functional
    validate_fact(fact)
    assert (await graph.entity("hall-3")).name == "hall 3"  # type: ignore[union-attr]
    query = "MATCH (f:Fact {id: $id})-[:ABSTRACTED_FROM]->(e:Episode) RETURN collect(e.id) AS ids"
    links = await graph.driver.execute_query(query, id=located[0].id)
    assert sorted(links.records[0]["ids"]) == sorted(e.id for e in pump_cluster)
    links_total = await count(graph, "MATCH (:Fact)-[r:ABSTRACTED_FROM]->(:Episode) RETURN count(r)")
    assert links_total == 2 * 3 + 1 * 2
    assert [e.key for e in await graph.pending_episodes(100)] == [eps[5].key]  # the loner waits
    run = await graph.dream_run(report.run_id)
    assert run is not None
    assert (run.clusters, run.facts, run.episodes, run.prune_sent) == (2, 3, 5, False)
    assert await graph.unsent_prunes() == [report.run_id]


async def test_a_second_run_is_a_no_op_and_a_recorded_run_id_returns_its_report(
    graph: KnowledgeGraph,
) -> None:
    await graph.add_episodes(episodes())
    first = await dreamer(graph).run()
    before = await snapshot(graph)
    again = await dreamer(graph).run()
    assert (again.run_id, again.clusters, again.facts_written, again.episodes_consolidated) == ("", 0, 0, 0)
    replay = await dreamer(graph).run(first.run_id)
    assert replay.recorded
    assert (replay.facts_written, replay.episodes_consolidated, replay.prune) == (3, 5, first.prune)
    assert await snapshot(graph) == before


async def test_a_run_whose_write_fails_writes_nothing_and_the_rerun_has_the_same_id(
    graph: KnowledgeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    await graph.add_episodes(episodes())
    before = await snapshot(graph)
    # the run's last statement fails on the server, after its facts, links and marks were sent
    monkeypatch.setattr(cypher, "RECORD_RUN", cypher.RECORD_RUN + "WITH 1 AS one RETURN 1 / 0 AS boom")
    with pytest.raises(BatchRejected, match="rolled back"):
        await dreamer(graph).run()
    assert await snapshot(graph) == before
    assert await count(graph, "MATCH (f:Fact) RETURN count(f)") == 0
    assert len(await graph.pending_episodes(100)) == 6

    monkeypatch.undo()
    first = await dreamer(graph).run()
    assert first.facts_written == 3
    # the id depends only on the episodes the run takes: a crash and a re-run give the same one
    await graph.driver.execute_query("MATCH (n) WHERE n:Fact OR n:Entity OR n:DreamRun DETACH DELETE n")
    await graph.driver.execute_query("MATCH (e:Episode) SET e:Pending REMOVE e.consolidated_run")
    assert (await dreamer(graph).run()).run_id == first.run_id


async def test_episodes_another_run_took_first_make_the_run_write_nothing(
    graph: KnowledgeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    await graph.add_episodes(episodes())
    stale = await graph.pending_episodes(100)  # what a second hub process read before the first wrote
    await dreamer(graph).run()
    before = await snapshot(graph)

    async def pending(limit: int) -> list[EpisodeRecord]:
        return stale

    monkeypatch.setattr(graph, "pending_episodes", pending)
    with pytest.raises(ConsolidationConflict) as exc:
        await dreamer(graph).run()
    assert exc.value.retryable
    assert await snapshot(graph) == before


async def test_a_cluster_without_a_valid_fact_is_settled_not_pruned(graph: KnowledgeGraph) -> None:
    eps = episodes()
    await graph.add_episodes(eps)
    copied = {"subject": "Robot R-1", "predicate": "located_in", "object": "hall 5"}  # the prompt's example
    invented = json.dumps({"facts": [copied]})
    report = await dreamer(graph, lambda _: invented).run()
    assert (report.facts_written, report.episodes_consolidated, report.episodes_settled) == (0, 0, 5)
    assert report.prune == {}
    assert sum("no valid fact" in why for _, why in report.rejected) == 2
    assert await graph.episodes_to_prune(report.run_id) == {}
    assert await graph.unsent_prunes() == []
    assert [e.key for e in await graph.pending_episodes(100)] == [eps[5].key]
    assert (await dreamer(graph, lambda _: invented).run()).run_id == ""


async def test_an_episode_alone_for_too_long_is_settled(graph: KnowledgeGraph) -> None:
    await graph.add_episodes(episodes(NOTES[5:]))
    assert (await dreamer(graph).run()).run_id == ""  # an hour old: it waits for company
    late = Dreamer(graph, FakeBrain(facts_json), clock=lambda: T0 + timedelta(days=8))
    report = await late.run()
    assert (report.clusters, report.episodes_settled, report.facts_written) == (0, 1, 0)
    assert await graph.pending_episodes(10) == []


async def test_names_resolve_to_entities_the_graph_already_has(graph: KnowledgeGraph) -> None:
    from edgehub.hub.knowledge import Entity

    await graph.ingest([Entity("site:hall-3", "Hall 3", "site")])
    await graph.add_episodes(episodes())
    await dreamer(graph).run()
    located = await graph.facts_about("pump-p-3", predicate="located_in")
    assert [f.fact.object for f in located] == ["site:hall-3"]
    assert (await graph.entity("site:hall-3")).kind == "site"  # type: ignore[union-attr]
    assert await graph.entity("hall-3") is None


async def test_the_service_sends_each_device_its_prune_commands_once(
    graph: KnowledgeGraph,
    nats_server: NatsServer,  # noqa: F811
) -> None:
    await graph.add_episodes(episodes())
    offline = DreamerService(DreamerConfig(interval_s=0), graph, None, brain=FakeBrain(facts_json))
    report = await offline.consolidate_now()  # no NATS: the prune stays owed
    assert await graph.unsent_prunes() == [report.run_id]

    nc = await connect(nats_server)
    try:
        js = nc.jetstream()
        service = DreamerService(DreamerConfig(interval_s=0), graph, js, brain=FakeBrain(facts_json))
        assert await service.send_prunes() == 2
        assert await service.send_prunes() == 0
        assert await graph.unsent_prunes() == []
        got: dict[str, list[str]] = {}
        for device in ("edge-1", "edge-2"):
            sub = await js.pull_subscribe(subjects.commands(device), stream=subjects.COMMANDS_STREAM)
            for msg in await sub.fetch(10, timeout=2):
                cmd = commands_pb2.Command.FromString(msg.data)
                assert cmd.prune_episodes.run_id == report.run_id
                got.setdefault(cmd.device_id, []).extend(cmd.prune_episodes.keys)
        assert {d: tuple(k) for d, k in got.items()} == report.prune
        await service.shutdown()
        await service.shutdown()
    finally:
        await nc.close()


@pytest.mark.model
async def test_the_real_small_model_gives_valid_json_and_only_checked_facts_are_written(
    graph: KnowledgeGraph, brain: LlamaBrain
) -> None:
    await graph.add_episodes(episodes())
    report = await Dreamer(graph, brain, clock=lambda: T0 + timedelta(hours=1)).run()
    print(f"\nreal model: {report}")
    facts = await graph.driver.execute_query(
        "MATCH (f:Fact) RETURN f.subject AS s, f.predicate AS p, coalesce(f.object, f.value) AS o"
    )
    print("facts:", [tuple(r.values()) for r in facts.records])
    assert report.clusters == 2
    # grammar-constrained: the answer always parses (a cut at max_tokens would be reported as such)
    assert not [why for _, why in report.rejected if "not a JSON object" in why]
    assert report.facts_written == len(facts.records)
    # every cluster either gave a checked fact (and its episodes are consolidated) or says why not
    assert report.episodes_consolidated + report.episodes_settled == 5
    if report.facts_written == 0:
        assert sum("no valid fact" in why for _, why in report.rejected) == 2


class Aborted(Exception):
    pass


class CallContext:
    """What the servicer uses of grpc's ServicerContext: ``abort`` ends the call with a status."""

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


def services(dreamer: DreamerService | None) -> HubServices:
    """The hub's services as far as ``Consolidate`` uses them."""
    return SimpleNamespace(dreamer=dreamer, goals=None)  # type: ignore[return-value]


async def test_the_consolidate_api_runs_the_service_or_says_it_is_not_enabled(graph: KnowledgeGraph) -> None:
    request = hub_pb2.ConsolidateRequest()
    with pytest.raises(Aborted) as exc:
        await HubService(services(None)).Consolidate(request, CallContext())
    assert exc.value.args == (grpc.StatusCode.FAILED_PRECONDITION, "consolidation is not enabled on this hub")

    await graph.add_episodes(episodes())
    service = DreamerService(DreamerConfig(interval_s=0), graph, None, brain=FakeBrain(facts_json))
    api = HubService(services(service))
    reply = await api.Consolidate(request, CallContext())
    assert (reply.clusters, reply.facts_written, reply.episodes_consolidated) == (2, 3, 5)
    assert {p.device_id: len(p.keys) for p in reply.prune} == {"edge-1": 3, "edge-2": 2}
    assert any("Robot R-1" in r.reason for r in reply.rejected)
    again = await api.Consolidate(hub_pb2.ConsolidateRequest(run_id=reply.run_id), CallContext())
    assert again.recorded
    assert again.facts_written == 3
    await service.shutdown()
    with pytest.raises(Aborted) as exc:
        await api.Consolidate(request, CallContext())
    assert exc.value.args[0] == grpc.StatusCode.FAILED_PRECONDITION  # shut down: not retryable


async def test_the_service_consolidates_on_its_schedule_until_stopped(graph: KnowledgeGraph) -> None:
    await graph.add_episodes(episodes())
    service = DreamerService(DreamerConfig(interval_s=0.2), graph, None, brain=FakeBrain(facts_json))
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    report = await eventually(lambda: service.last, within=30, what="a scheduled run")
    assert report.facts_written == 3
    stop.set()
    await asyncio.wait_for(task, 5)

    task = asyncio.create_task(service.run(asyncio.Event()))
    await service.shutdown()  # ends the loop too
    await asyncio.wait_for(task, 5)


async def test_a_missing_model_file_is_a_clear_error_at_start(graph: KnowledgeGraph, tmp_path: Path) -> None:
    service = DreamerService(DreamerConfig(model_path=tmp_path / "nope.gguf"), graph)
    with pytest.raises(DreamerError, match=r"nope\.gguf: not found \(set dreamer\.model_path"):
        await service.start()
