"""The L4 knowledge graph against a real Neo4j Community server (hub/neo4j-launcher, one per session)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from edgehub.hub.knowledge import (
    AsOf,
    BatchRejected,
    Entity,
    Fact,
    GraphUnavailable,
    Hop,
    InvalidKnowledge,
    KnowledgeGraph,
    Migration,
    Neo4jServer,
    Provenance,
    SchemaError,
    migrate,
)
from edgehub.hub.knowledge.schema import MIGRATIONS
from edgehub.sync import free_port
from tests.harness.neo4j import reset

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
EDGE1 = Provenance(device_id="edge-1", agent_id="agent-7", step_id="agent-7/0/3/action")
EDGE2 = Provenance(device_id="edge-2", agent_id="agent-9", episode_id="ep-42")


def h(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def located(obj: str, start: float, prov: Provenance = EDGE1, **kw: Any) -> Fact:
    return Fact("robot-7", "located_in", h(start), prov, object=obj, **kw)


async def snapshot(g: KnowledgeGraph) -> tuple[list[str], list[str]]:
    """Every node and relationship with its properties, as sorted text: equal snapshots, equal graphs."""
    nodes = await g.driver.execute_query("MATCH (n) RETURN labels(n) AS l, properties(n) AS p")
    rels = await g.driver.execute_query(
        "MATCH (a)-[r]->(b) RETURN type(r) AS t, properties(r) AS p, "
        "coalesce(a.id, a.version) AS a, coalesce(b.id, b.version) AS b"
    )
    return (
        sorted(repr((r["l"], sorted(r["p"].items()))) for r in nodes.records),
        sorted(repr((r["t"], sorted(r["p"].items()), r["a"], r["b"])) for r in rels.records),
    )


async def count(g: KnowledgeGraph, query: str) -> int:
    return int((await g.driver.execute_query(query)).records[0][0])


SITE = [
    Entity("robot-7", "Robot 7", "robot"),
    Entity("hall-a", "Hall A", "site"),
    Entity("hall-b", "Hall B", "site"),
    Entity("plant-1", "Plant 1", "site"),
]


async def test_migrations_create_the_schema_once_and_rerunning_them_changes_nothing(
    graph: KnowledgeGraph,
) -> None:
    await reset(graph)
    assert await graph.migrate() == [m.version for m in MIGRATIONS]
    before = await snapshot(graph)
    schema = await graph.driver.execute_query("SHOW CONSTRAINTS YIELD name RETURN collect(name) AS n")
    assert {"entity_id", "fact_id", "migration_version"} <= set(schema.records[0]["n"])
    indexes = await graph.driver.execute_query("SHOW INDEXES YIELD name RETURN collect(name) AS n")
    assert {"fact_subject_predicate", "fact_episode", "fact_device", "entity_kind"} <= set(
        indexes.records[0]["n"]
    )

    assert await graph.migrate() == []
    assert await snapshot(graph) == before
    assert await count(graph, "MATCH (m:Migration) RETURN count(m)") == len(MIGRATIONS)


async def test_migrate_refuses_an_edited_migration_and_a_newer_graph(graph: KnowledgeGraph) -> None:
    edited = (
        Migration(1, "unique keys", ("CREATE INDEX other IF NOT EXISTS FOR (n:X) ON (n.y)",)),
        *MIGRATIONS[1:],
    )
    with pytest.raises(SchemaError, match="differs"):
        await migrate(graph.driver, migrations=edited)
    await graph.driver.execute_query("CREATE (:Migration {version: 99, checksum: 'x'})")
    with pytest.raises(SchemaError, match="newer"):
        await graph.migrate()


async def test_ingest_writes_entities_facts_and_relations_with_provenance(graph: KnowledgeGraph) -> None:
    facts = [
        located("hall-a", 0),
        Fact("hall-a", "part_of", h(0), EDGE2, object="plant-1"),
        Fact("robot-7", "battery_pct", h(1), EDGE1, value=87),
        Fact("robot-7", "knows", h(1), EDGE1, object="robot-9", functional=False),
    ]
    result = await graph.ingest(SITE, facts, recorded_at=h(2))
    assert (result.entities, result.created, result.closed, result.superseded) == (4, 4, 0, 0)
    assert await graph.entity("robot-7") == Entity("robot-7", "Robot 7", "robot")
    assert await graph.entity("robot-9") == Entity("robot-9", "robot-9", "thing")  # named, not declared

    stored = {s.fact.predicate: s for s in await graph.facts_about("robot-7", as_of=AsOf(valid_at=h(3)))}
    assert set(stored) == {"located_in", "battery_pct", "knows"}
    assert stored["located_in"].fact == facts[0]
    assert stored["located_in"].id == facts[0].id
    assert stored["located_in"].recorded_at == h(2)
    assert stored["battery_pct"].fact.value == 87
    assert stored["battery_pct"].fact.provenance == EDGE1
    incoming = await graph.facts_about("plant-1", direction="in", as_of=AsOf(valid_at=h(3)))
    assert [(s.fact.subject, s.fact.provenance) for s in incoming] == [("hall-a", EDGE2)]
    assert await count(graph, "MATCH (:Fact)-[:OBJECT]->(:Entity) RETURN count(*)") == 3
    assert await count(graph, "MATCH (:Fact)-[:SUBJECT]->(:Entity) RETURN count(*)") == 4


async def test_a_contradicting_fact_closes_the_current_one_instead_of_deleting_it(
    graph: KnowledgeGraph,
) -> None:
    await graph.ingest(SITE, [located("hall-a", 0)], recorded_at=h(1))
    result = await graph.ingest([], [located("hall-b", 5, EDGE2)], recorded_at=h(6))
    assert (result.created, result.closed) == (1, 1)

    history = await graph.facts_about("robot-7", predicate="located_in", history=True)
    assert [(s.fact.object, s.fact.valid_from, s.valid_to) for s in history] == [
        ("hall-a", h(0), h(5)),
        ("hall-b", h(5), None),
    ]
    assert history[0].fact.valid_to is None  # what edge-1 stated is kept; the closing is the graph's
    now = await graph.facts_about("robot-7", predicate="located_in")
    assert [s.fact.object for s in now] == ["hall-b"]
    closes = "MATCH (:Fact {object: 'hall-b'})-[:CLOSES]->(:Fact {object: 'hall-a'}) RETURN count(*)"
    assert await count(graph, closes) == 1

    # the same object again, a many-valued predicate, another subject: none of them contradicts
    same = await graph.ingest([], [located("hall-b", 7, EDGE1)], recorded_at=h(8))
    many = await graph.ingest(
        [],
        [
            Fact("robot-7", "knows", h(7), EDGE1, object="robot-8", functional=False),
            Fact("robot-7", "knows", h(8), EDGE1, object="robot-9", functional=False),
            Fact("robot-8", "located_in", h(9), EDGE1, object="hall-a"),
        ],
        recorded_at=h(9),
    )
    assert (same.closed, many.closed) == (0, 0)
    assert len(await graph.facts_about("robot-7", predicate="knows", as_of=AsOf(valid_at=h(10)))) == 2


async def test_a_late_fact_is_closed_by_the_later_one_already_known(graph: KnowledgeGraph) -> None:
    await graph.ingest(SITE, [located("hall-b", 5)], recorded_at=h(6))
    result = await graph.ingest([], [located("hall-a", 0, EDGE2)], recorded_at=h(7))
    assert result.closed == 1
    history = await graph.facts_about("robot-7", predicate="located_in", history=True)
    assert [(s.fact.object, s.valid_to) for s in history] == [("hall-a", h(5)), ("hall-b", None)]


async def test_facts_in_one_batch_are_applied_in_valid_time_order(graph: KnowledgeGraph) -> None:
    batch = [located("plant-1", 4), located("hall-a", 0), located("hall-b", 2)]
    result = await graph.ingest(SITE, batch, recorded_at=h(5))
    assert (result.created, result.closed) == (3, 2)
    history = await graph.facts_about("robot-7", predicate="located_in", history=True)
    assert [(s.fact.object, s.valid_to) for s in history] == [
        ("hall-a", h(2)),
        ("hall-b", h(4)),
        ("plant-1", None),
    ]


async def test_a_correction_with_the_same_start_supersedes_the_old_fact(graph: KnowledgeGraph) -> None:
    await graph.ingest(SITE, [located("hall-a", 0)], recorded_at=h(1))
    result = await graph.ingest([], [located("hall-b", 0, EDGE2)], recorded_at=h(2))
    assert (result.closed, result.superseded) == (0, 1)
    then = await graph.facts_about("robot-7", as_of=AsOf(valid_at=h(3), known_at=h(1.5)))
    now = await graph.facts_about("robot-7", as_of=AsOf(valid_at=h(3)))
    assert [s.fact.object for s in then] == ["hall-a"]
    assert [s.fact.object for s in now] == ["hall-b"]


async def test_as_of_queries_answer_in_valid_time_and_in_transaction_time(graph: KnowledgeGraph) -> None:
    """Robot 7 was in hall A from h0 (learned at h1), in hall B from h5 (learned at h10); hall A is
    part of plant 1 from h0, hall B from h0 (learned at h1)."""
    await graph.ingest(
        SITE,
        [
            located("hall-a", 0),
            Fact("hall-a", "part_of", h(0), EDGE1, object="plant-1"),
            Fact("hall-b", "part_of", h(0), EDGE1, object="plant-1"),
        ],
        recorded_at=h(1),
    )
    await graph.ingest([], [located("hall-b", 5)], recorded_at=h(10))

    async def where(valid: float, known: float | None) -> list[str]:
        as_of = AsOf(valid_at=h(valid), known_at=None if known is None else h(known))
        return [s.fact.object or "" for s in await graph.facts_about("robot-7", as_of=as_of)]

    assert await where(2, None) == ["hall-a"]  # true then, as we know now
    assert await where(6, None) == ["hall-b"]
    assert await where(6, 8) == ["hall-a"]  # at h8 we did not know it had moved
    assert await where(6, 0.5) == []  # before h1 we knew nothing
    assert await where(-1, None) == []  # before it was anywhere we know of

    late = await graph.facts_about("robot-7", as_of=AsOf(valid_at=h(6), known_at=h(8)))
    assert late[0].valid_to is None  # as known at h8, hall A had no end yet
    paths = await graph.multi_hop("robot-7", [Hop("located_in"), Hop("part_of")], as_of=AsOf(h(6), h(8)))
    assert [[e.id for e in p.entities] for p in paths] == [["robot-7", "hall-a", "plant-1"]]
    near = await graph.neighbourhood("robot-7", depth=1, as_of=AsOf(h(6), h(11)))
    assert {e.id for e in near.entities} == {"robot-7", "hall-b"}


async def test_a_retracted_fact_disappears_from_then_on_but_not_before(graph: KnowledgeGraph) -> None:
    result = await graph.ingest(SITE, [located("hall-a", 0)], recorded_at=h(1))
    assert await graph.retract(result.ids, recorded_at=h(3)) == 1
    assert await graph.retract(result.ids, recorded_at=h(4)) == 0
    assert await graph.facts_about("robot-7") == []
    assert len(await graph.facts_about("robot-7", as_of=AsOf(valid_at=h(2), known_at=h(2)))) == 1


ODD_TEXT = [
    "it's",
    'say "hi"',
    "back\\slash \\' \\\" $param {x} `tick`",
    "'}) MATCH (n) DETACH DELETE n //",
    "ünïcødé ñ 東京 Ελληνικά עברית مرحبا",
    "emoji 🤖🏭 and a ZWJ 👩‍🔧 and combining e\u0301",
    "nul\x00inside and a newline\nand tab\t",
    "",
    "x" * 16_384,
]
ODD_NUMBERS = [2**62, -(2**63) + 1, 2**63 - 1, -(2**63), 0, -1, 0.1, 1e308, -2.5e-308, 3.141592653589793]


async def test_parameters_with_quotes_unicode_and_large_numbers_round_trip_exactly(
    graph: KnowledgeGraph,
) -> None:
    values: list[str | int | float | bool] = [*ODD_TEXT, *ODD_NUMBERS, True, False]
    subject = "entity 'quoted' \"double\" 東京 🤖"
    facts = [Fact(subject, f"p{i}", h(0), EDGE1, value=v) for i, v in enumerate(values)]
    facts.append(Fact(subject, "links_to", h(0), EDGE1, object="'}) DETACH DELETE n //"))
    entity = Entity(subject, "Name with 'quotes' and \"doubles\" and ünïcødé", "kind 🤖")
    await graph.ingest([entity], facts, recorded_at=h(1))

    assert await graph.entity(subject) == entity
    stored = {
        s.fact.predicate: s.fact for s in await graph.facts_about(subject, as_of=AsOf(h(2)), limit=1000)
    }
    for i, value in enumerate(values):
        got = stored[f"p{i}"].value
        assert (got, type(got)) == (value, type(value)), i
    assert stored["links_to"].object == "'}) DETACH DELETE n //"
    assert await count(graph, "MATCH (n) RETURN count(n)") == len(values) + 1 + 2 + len(MIGRATIONS)


async def test_a_batch_that_neo4j_rejects_midway_rolls_back_completely(graph: KnowledgeGraph) -> None:
    await graph.ingest(SITE, [located("hall-a", 0)], recorded_at=h(1))
    # An operator's extra rule: one fact per mind-log step. The batch's last fact repeats the step of
    # the fact already stored, and is written last: after the other facts, their entities and the
    # closing of hall-a have been written in the same transaction.
    await graph.driver.execute_query(
        "CREATE CONSTRAINT test_one_fact_per_step FOR (f:Fact) REQUIRE f.step_id IS UNIQUE"
    )
    before = await snapshot(graph)
    batch = [
        located("hall-b", 5, EDGE2),  # closes hall-a
        Fact("robot-8", "located_in", h(5), EDGE2, object="hall-c"),  # a new entity
        Fact("robot-8", "battery_pct", h(5), EDGE2, value=50),
        Fact("robot-8", "located_in", h(6), EDGE1, object="plant-1"),  # the last round; EDGE1's step
    ]
    with pytest.raises(BatchRejected) as err:
        await graph.ingest([Entity("robot-8", "Robot 8", "robot")], batch, recorded_at=h(8))
    assert "ConstraintValidationFailed" in err.value.neo4j_code
    assert not err.value.retryable
    assert await snapshot(graph) == before
    now = await graph.facts_about("robot-7", as_of=AsOf(valid_at=h(9)))
    assert [(s.fact.object, s.valid_to) for s in now] == [("hall-a", None)]
    assert await graph.entity("robot-8") is None
    assert await graph.entity("hall-c") is None


async def test_an_invalid_item_is_refused_before_anything_is_written(graph: KnowledgeGraph) -> None:
    before = await snapshot(graph)
    naive = datetime(2026, 3, 1, 8, 0)
    with pytest.raises(InvalidKnowledge) as err:
        await graph.ingest(SITE, [located("hall-a", 0), Fact("robot-7", "seen", naive, EDGE1, value=1)])
    assert (err.value.index, err.value.field) == (1, "valid_from")
    assert await snapshot(graph) == before


async def test_ingesting_the_same_batch_twice_leaves_the_same_graph(graph: KnowledgeGraph) -> None:
    batch = [
        located("hall-a", 0),
        located("hall-b", 5),
        located("hall-a", 0, EDGE2),  # the same fact from another device: a second fact
        Fact("hall-a", "part_of", h(0), EDGE1, object="plant-1"),
        Fact("robot-7", "battery_pct", h(1), EDGE1, value=87),
    ]
    first = await graph.ingest(SITE, batch, recorded_at=h(6))
    once = await snapshot(graph)
    again = await graph.ingest(SITE, batch, recorded_at=h(9))
    assert (first.created, again.created, again.closed, again.superseded) == (5, 0, 0, 0)
    assert await snapshot(graph) == once


async def test_neighbourhood_stops_at_the_depth_and_the_limits(graph: KnowledgeGraph) -> None:
    chain = [Fact(f"n{i}", "next_to", h(0), EDGE1, object=f"n{i + 1}", functional=False) for i in range(5)]
    star = [Fact("hub", "serves", h(0), EDGE1, object=f"leaf-{i}", functional=False) for i in range(20)]
    notes = [Fact("n0", f"note_{i}", h(0), EDGE1, value=i) for i in range(10)]
    await graph.ingest([], chain + star + notes, recorded_at=h(1))

    one = await graph.neighbourhood("n1", depth=1, as_of=AsOf(h(2)))
    two = await graph.neighbourhood("n1", depth=2, as_of=AsOf(h(2)))
    assert {e.id for e in one.entities} == {"n0", "n1", "n2"}
    assert {e.id for e in two.entities} == {"n0", "n1", "n2", "n3"}
    assert {f.fact.subject for f in two.facts if f.fact.is_relation} == {"n0", "n1", "n2"}
    assert not two.truncated
    capped = await graph.neighbourhood("hub", depth=1, as_of=AsOf(h(2)), limit=5)
    assert capped.truncated
    assert len(capped.entities) == 6
    few_notes = await graph.neighbourhood("n0", depth=1, as_of=AsOf(h(2)), fact_limit=3)
    assert few_notes.truncated
    with pytest.raises(InvalidKnowledge):
        await graph.neighbourhood("n0", depth=7)


async def test_multi_hop_follows_predicates_and_directions_in_order(graph: KnowledgeGraph) -> None:
    await graph.ingest(
        SITE,
        [
            located("hall-a", 0),
            Fact("robot-8", "located_in", h(0), EDGE1, object="hall-a"),
            Fact("hall-a", "part_of", h(0), EDGE1, object="plant-1"),
            Fact("robot-7", "operated_by", h(0), EDGE1, object="ana"),
        ],
        recorded_at=h(1),
    )
    up = await graph.multi_hop("robot-7", [Hop("located_in"), Hop("part_of")], as_of=AsOf(h(2)))
    assert [[e.id for e in p.entities] for p in up] == [["robot-7", "hall-a", "plant-1"]]
    assert [f.fact.predicate for f in up[0].facts] == ["located_in", "part_of"]
    peers = await graph.multi_hop("robot-7", [Hop("located_in"), Hop("located_in", "in")], as_of=AsOf(h(2)))
    assert [p.entities[-1].id for p in peers] == ["robot-8"]  # a relation is not walked back along itself
    anything = await graph.multi_hop(
        "plant-1", [Hop(direction="both"), Hop(direction="both")], as_of=AsOf(h(2))
    )
    assert {p.entities[-1].id for p in anything} == {"robot-7", "robot-8"}
    with pytest.raises(InvalidKnowledge):
        await graph.multi_hop("robot-7", [Hop("Located In")])


async def test_unreachable_or_refusing_neo4j_gives_a_clear_error(neo4j_server: Neo4jServer) -> None:
    with pytest.raises(GraphUnavailable) as down:
        await KnowledgeGraph.connect(
            f"bolt://127.0.0.1:{free_port()}", "neo4j", "whatever", connect_timeout=5
        )
    assert down.value.retryable
    with pytest.raises(GraphUnavailable, match="credentials") as refused:
        await KnowledgeGraph.connect(neo4j_server.uri, "neo4j", "not-the-password")
    assert not refused.value.retryable


async def test_times_in_any_zone_are_the_same_instant(graph: KnowledgeGraph) -> None:
    tokyo = timezone(timedelta(hours=9))
    fact = located("hall-a", 0)
    same = Fact("robot-7", "located_in", h(0).astimezone(tokyo), EDGE1, object="hall-a")
    assert same.id == fact.id
    await graph.ingest(SITE, [fact, same], recorded_at=h(1))
    [stored] = await graph.facts_about("robot-7", as_of=AsOf(valid_at=h(1).astimezone(tokyo)))
    assert stored.fact.valid_from == h(0)
