"""The L4 model's pure logic: fact ids, validation, the write plan, the migrations list, the Cypher
builders, the [neo4j] config section."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from edgehub.hub.config import load_config
from edgehub.hub.knowledge import MIGRATIONS, Entity, Fact, Hop, InvalidKnowledge, Provenance, cypher, fact_id
from edgehub.hub.knowledge.episodes import episode_records
from edgehub.hub.knowledge.model import MAX_BATCH, MAX_TEXT, object_key, plan, validate_batch
from edgehub.protocol.v1 import events_pb2

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
P = Provenance(device_id="edge-1", agent_id="agent-7")


def fact(**kw: object) -> Fact:
    base: dict[str, object] = {
        "subject": "robot-7",
        "predicate": "located_in",
        "valid_from": T0,
        "provenance": P,
        "object": "hall-a",
    }
    base.update(kw)
    return Fact(**base)  # type: ignore[arg-type]


def test_a_fact_id_is_a_stable_hash_of_content_and_provenance() -> None:
    # Pinned: ids are the MERGE keys of stored facts, so changing how they are made breaks idempotency
    # against every graph written before. Change this value only with a migration that re-keys facts.
    assert fact().id == "f948c95441fc3759b324a78af3271ca6b"
    assert fact().id == fact_id(fact())
    assert re.fullmatch(r"f[0-9a-f]{32}", fact().id)


@pytest.mark.parametrize(
    "change",
    [
        {"subject": "robot-8"},
        {"predicate": "parked_in"},
        {"object": "hall-b"},
        {"valid_from": T0 + timedelta(microseconds=1)},
        {"valid_to": T0 + timedelta(hours=1)},
        {"provenance": Provenance(device_id="edge-2", agent_id="agent-7")},
        {"provenance": Provenance(device_id="edge-1", agent_id="agent-7", step_id="s1")},
        {"object": None, "value": "hall-a"},
    ],
)
def test_any_change_of_content_or_provenance_changes_the_id(change: dict[str, object]) -> None:
    assert fact(**change).id != fact().id


def test_values_of_different_types_are_different_facts() -> None:
    ids = {fact(object=None, value=v).id for v in (1, 1.0, True, "1")}
    assert len(ids) == 4
    assert object_key(fact(object=None, value=True)) != object_key(fact(object=None, value=1))


def test_the_id_ignores_the_time_zone_and_the_functional_flag() -> None:
    tokyo = timezone(timedelta(hours=9))
    assert fact(valid_from=T0.astimezone(tokyo)).id == fact().id
    assert fact(functional=False).id == fact().id


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"subject": ""}, "subject"),
        ({"subject": "x" * 513}, "subject"),
        ({"predicate": "Located In"}, "predicate"),
        ({"predicate": "located-in"}, "predicate"),
        ({"predicate": ""}, "predicate"),
        ({"object": None}, "object"),
        ({"value": 3}, "object"),
        ({"object": None, "value": 2**63}, "value"),
        ({"object": None, "value": -(2**63) - 1}, "value"),
        ({"object": None, "value": float("nan")}, "value"),
        ({"object": None, "value": float("inf")}, "value"),
        ({"object": None, "value": [1, 2]}, "value"),
        ({"object": None, "value": "x" * (MAX_TEXT + 1)}, "value"),
        ({"valid_from": datetime(2026, 3, 1)}, "valid_from"),
        ({"valid_to": T0}, "valid_to"),
        ({"valid_to": T0 - timedelta(seconds=1)}, "valid_to"),
        ({"valid_to": datetime(2027, 1, 1)}, "valid_to"),
        ({"provenance": Provenance()}, "provenance"),
        ({"provenance": Provenance(device_id="d" * 513)}, "provenance.device_id"),
    ],
)
def test_validation_names_the_item_and_the_field(bad: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidKnowledge) as err:
        validate_batch([], [fact(), fact(**bad)])
    assert (err.value.index, err.value.field) == (1, field)


def test_validation_accepts_the_edges_of_each_range() -> None:
    validate_batch(
        [Entity("e", "", "k"), Entity("東京 🤖 'x'", "name", "kind")],
        [
            fact(object=None, value=2**63 - 1),
            fact(object=None, value=-(2**63)),
            fact(object=None, value=""),
            fact(object=None, value="x" * MAX_TEXT),
            fact(object=None, value=False),
            fact(predicate="a" * 64),
            fact(provenance=Provenance(episode_id="ep-1")),
        ],
    )
    with pytest.raises(InvalidKnowledge, match="at most"):
        validate_batch([Entity(f"e{i}") for i in range(MAX_BATCH + 1)], [])
    with pytest.raises(InvalidKnowledge) as err:
        validate_batch([Entity("")], [])
    assert (err.value.index, err.value.field) == (0, "id")


def test_plan_writes_many_valued_facts_first_then_one_functional_fact_per_key_and_round() -> None:
    hours = [T0 + timedelta(hours=n) for n in range(4)]
    a0, a2 = fact(object="hall-a", valid_from=hours[0]), fact(object="hall-a", valid_from=hours[2])
    b1 = fact(object="hall-b", valid_from=hours[1])
    other = fact(subject="robot-8", valid_from=hours[3])
    knows = [fact(predicate="knows", object=f"r{i}", functional=False) for i in range(3)]
    groups = plan([a2, other, knows[0], b1, a0, knows[1], a0, knows[2]])
    assert groups == [knows, [a0, other], [b1], [a2]]


def test_migrations_are_numbered_in_order_and_idempotent() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    for m in MIGRATIONS:
        assert all("IF NOT EXISTS" in s for s in m.statements), m.name
    # Pinned: an applied migration must never change (append a new one); migrate() refuses a graph
    # whose recorded checksum differs, so a change here would lock every deployed hub out.
    pinned = ["9d98d677b9ab2c17", "10f76cb4ee4d04cc", "17d831cfd61c67d6", "d363177486ec8750"]
    assert [m.checksum for m in MIGRATIONS] == pinned


def test_query_builders_take_values_as_parameters_only() -> None:
    query = cypher.multi_hop([Hop("located_in"), Hop(None, "in"), Hop("part_of", "both")], latest=False)
    assert "located_in" not in query
    assert "part_of" not in query
    params = set(re.findall(r"\$\w+", query))
    assert {"$p0", "$p1", "$p2", "$start", "$known_at", "$valid_at", "$limit"} <= params
    assert "{1,3}" in cypher.neighbourhood(3, latest=True)
    assert "$known_at" not in cypher.facts_about("both", latest=True, history=False)


def test_neo4j_config_defaults_to_the_standard_variables_and_hub_settings_override_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("NEO4J_URI", "NEO4J_USER", "NEO4J_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    embedded = load_config(env={}).neo4j
    assert (embedded.uri, embedded.user, embedded.password) == (None, "neo4j", None)
    monkeypatch.setenv("NEO4J_URI", "neo4j://graph.internal:7687")
    monkeypatch.setenv("NEO4J_PASSWORD", "s3cret-pass")
    operator = load_config(env={}).neo4j
    assert (operator.uri, operator.password) == ("neo4j://graph.internal:7687", "s3cret-pass")
    assert "s3cret" not in repr(operator)
    override = load_config(env={"EDGEHUB_HUB__NEO4J__URI": "bolt://10.0.0.5:7687"}).neo4j
    assert override.uri == "bolt://10.0.0.5:7687"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("line 3", "line 3"),
        ('line AND "3" OR *:*', 'line and \\"3\\" or \\*\\:\\*'),
        ("a+b (c) [d] {e} ~f^2 g? h/i \\", "a\\+b \\(c\\) \\[d\\] \\{e\\} \\~f\\^2 g\\? h\\/i \\\\"),
        ("  ", ""),
    ],
)
def test_a_users_words_are_only_ever_words_to_lucene(text: str, words: str) -> None:
    assert cypher.lucene_words(text) == words


def test_replicated_episodes_that_cannot_be_stored_are_dropped_not_raised() -> None:
    def event(**kw: object) -> events_pb2.EdgeEvent:
        ep = events_pb2.Episode(key="k", text="belt slipped", embedding=[0.05] * 384, importance=0.5)
        for name, value in kw.items():
            if name == "embedding":
                del ep.embedding[:]
                ep.embedding.extend(value)  # type: ignore[arg-type]
            else:
                setattr(ep, name, value)
        ep.at.FromSeconds(1_700_000_000)
        return events_pb2.EdgeEvent(event_id="episode/k", device_id="dev-1", agent_id="a1", episode=ep)

    bad = [
        event(text=""),
        event(text="x" * 20_000),
        event(embedding=[0.1] * 10),
        event(embedding=[float("nan")] * 384),
        event(importance=3.0),
        event(key=""),
    ]
    (record,) = episode_records([event(), *bad])
    assert (record.id, record.step, len(record.embedding)) == ("dev-1/k", 0, 384)
    assert record.at == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
