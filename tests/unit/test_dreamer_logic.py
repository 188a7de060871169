"""Consolidation's logic without Neo4j: clustering, run ids, checking what the model wrote, prompts
that fit, prune commands, episode validation and the [dreamer] config."""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import UTC, datetime

import numpy as np
import pytest

from edgehub.hub.config import load_config
from edgehub.hub.errors import HubConfigError
from edgehub.hub.knowledge import EpisodeRecord, InvalidKnowledge
from edgehub.hub.knowledge.abstraction import SCHEMA, Statement, abstract, check, fit, prompt, slug
from edgehub.hub.knowledge.clusters import Cluster, cluster_episodes
from edgehub.hub.knowledge.dreamer import run_id_for
from edgehub.hub.knowledge.dreamer_service import PRUNE_CHUNK, prune_commands
from edgehub.hub.knowledge.model import EMBEDDING_DIM, validate_episode
from edgehub.llm.fake import FakeBrain

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def vec(*head: float) -> tuple[float, ...]:
    """A 384-d unit vector whose first components are ``head``."""
    v = np.zeros(EMBEDDING_DIM)
    v[: len(head)] = head
    return tuple(float(x) for x in v / np.linalg.norm(v))


def at_angle(degrees: float) -> tuple[float, ...]:
    r = math.radians(degrees)
    return vec(math.cos(r), math.sin(r))


def ep(key: str, embedding: tuple[float, ...], text: str = "", device: str = "edge-1") -> EpisodeRecord:
    return EpisodeRecord(device, "agent-1", key, text or f"episode {key}", embedding, T0, 0.5, 1)


def keys(clusters: list[Cluster]) -> list[list[str]]:
    return [[e.key for e in c.episodes] for c in clusters]


# -- clustering ----------------------------------------------------------------------------------


def test_related_episodes_cluster_across_devices_and_loners_stay_out() -> None:
    episodes = [
        ep("pump-a", vec(1, 0.1), device="edge-1"),
        ep("belt-a", vec(0, 1, 0.1), device="edge-1"),
        ep("pump-b", vec(1, 0.2), device="edge-2"),
        ep("alone", vec(0, 0, 1)),
        ep("belt-b", vec(0.1, 1), device="edge-2"),
        ep("pump-c", vec(1, 0, 0.2), device="edge-2"),
    ]
    clusters = cluster_episodes(episodes, similarity=0.8, min_cluster=2, max_cluster=8)
    assert sorted(sorted(k) for k in keys(clusters)) == [["belt-a", "belt-b"], ["pump-a", "pump-b", "pump-c"]]
    pumps = next(c for c in clusters if c.centre.key.startswith("pump"))
    assert {e.device_id for e in pumps.episodes} == {"edge-1", "edge-2"}


def test_a_chain_of_pairwise_neighbours_is_not_one_cluster() -> None:
    # 0-50-100-150 degrees: each neighbour of the next (cos 50 = 0.64), the ends far apart
    chain = [ep(str(i), at_angle(a)) for i, a in enumerate((0, 50, 100, 150))]
    clusters = cluster_episodes(chain, similarity=0.6, min_cluster=2, max_cluster=8)
    assert len(clusters) == 1
    assert clusters[0].centre.key == "1"  # the first of the densest; "3" stays pending
    assert sorted(keys(clusters)[0]) == ["0", "1", "2"]


def test_clusters_do_not_depend_on_the_order_episodes_arrive_in() -> None:
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(4, EMBEDDING_DIM))
    episodes = [
        ep(f"{t}-{i}", tuple(float(x) for x in centres[t] + rng.normal(scale=0.3, size=EMBEDDING_DIM)))
        for t in range(4)
        for i in range(5)
    ]
    first = cluster_episodes(episodes, similarity=0.7, min_cluster=2, max_cluster=8)
    again = cluster_episodes(episodes[::-1], similarity=0.7, min_cluster=2, max_cluster=8)
    assert sorted(c.id for c in first) == sorted(c.id for c in again)
    assert sorted(sorted(k) for k in keys(first)) == [[f"{t}-{i}" for i in range(5)] for t in range(4)]


def test_max_cluster_keeps_the_most_similar_and_leaves_the_rest_pending() -> None:
    episodes = [ep(str(i), vec(1, 0.05 * i)) for i in range(6)]
    clusters = cluster_episodes(episodes, similarity=0.9, min_cluster=2, max_cluster=3)
    assert [len(c.episodes) for c in clusters] == [3, 3]
    assert cluster_episodes(episodes[:1], similarity=0.9, min_cluster=2, max_cluster=3) == []
    with pytest.raises(ValueError, match="min_cluster"):
        cluster_episodes(episodes, similarity=0.9, min_cluster=4, max_cluster=3)


def test_cluster_and_run_ids_are_stable_for_the_same_episodes() -> None:
    a, b, c = ep("a", vec(1)), ep("b", vec(1, 0.1)), ep("c", vec(1, 0.2))
    assert Cluster((a, b)).id == Cluster((b, a)).id != Cluster((a, c)).id
    assert run_id_for([a.id, b.id]) == run_id_for([b.id, a.id]) != run_id_for([a.id, c.id])
    assert run_id_for([a.id]).startswith("dream-")


# -- what the model wrote ------------------------------------------------------------------------

PUMP = [
    ep("1", vec(1), "Pump P-3 in hall 3 reported vibration of 11.2 mm/s, above the 7 mm/s alarm limit."),
    ep("2", vec(1), "Maintenance replaced the bearing on pump P-3; vibration dropped to 2.1 mm/s."),
]


def answer(*facts: dict[str, object]) -> str:
    return json.dumps({"facts": list(facts)})


def test_grounded_facts_pass_and_predicates_are_normalised() -> None:
    text = answer(
        {"subject": "pump P-3", "predicate": "Located In", "object": "Hall 3"},
        {"subject": "Pump  P-3", "predicate": "vibration_mm_s", "value": 2.1},
    )
    statements, rejected = check(text, PUMP, max_facts=5)
    assert rejected == []
    assert statements == [
        Statement("pump P-3", "located_in", object="Hall 3"),
        Statement("Pump P-3", "vibration_mm_s", value=2.1),
    ]


@pytest.mark.parametrize(
    ("fact", "reason"),
    [
        ({"subject": "Robot R-1", "predicate": "located_in", "object": "hall 5"}, "does not occur"),
        ({"subject": "pump P-3", "predicate": "is located in!", "object": "hall 3"}, "lower_snake_case"),
        ({"subject": "pump P-3", "predicate": "same_as", "object": "Pump P-3"}, "subject itself"),
        ({"subject": "pump P-3", "predicate": "x", "object": "hall 3", "value": 1}, "exactly one"),
        ({"subject": "pump P-3", "predicate": "note", "value": "  "}, "must not be empty"),
        ({"subject": "", "predicate": "x", "value": 1}, "must be a name"),
        ({"subject": "pump", "predicate": "x", "value": float("nan")}, "finite"),
        ({"subject": "pump P-3", "predicate": "firmware_version", "value": "2.3"}, "'2.3' does not occur"),
        ({"subject": "pump P-3", "predicate": "vibration", "value": 11.25}, "does not occur"),
        ("just text", "not an object"),
    ],
)
def test_a_bad_fact_is_dropped_with_its_reason(fact: object, reason: str) -> None:
    statements, rejected = check(json.dumps({"facts": [fact]}), PUMP, max_facts=5)
    assert statements == []
    assert len(rejected) == 1
    assert reason in rejected[0]


def test_a_name_must_match_whole_words() -> None:
    statements, _ = check(answer({"subject": "P-3 in hall", "predicate": "x", "value": 1}), PUMP, max_facts=5)
    assert len(statements) == 1
    _, rejected = check(answer({"subject": "hall 33", "predicate": "x", "value": 1}), PUMP, max_facts=5)
    assert "does not occur" in rejected[0]


def test_repeats_and_facts_beyond_the_limit_are_dropped() -> None:
    fact = {"subject": "pump P-3", "predicate": "located_in", "object": "hall 3"}
    same = {**fact, "subject": "Pump p-3"}
    other = {"subject": "pump P-3", "predicate": "vibration_mm_s", "value": 2.1}
    statements, rejected = check(answer(fact, fact, same, other, other), PUMP, max_facts=1)
    assert len(statements) == 1
    assert rejected == [
        "fact 3: repeats an earlier one",
        "fact 4: more than 1 facts from one cluster",
        "2 verbatim repeats of earlier facts",
    ]


def test_an_answer_cut_at_the_token_limit_keeps_its_complete_facts() -> None:
    fact = '{"subject": "pump P-3", "predicate": "located_in", "object": "hall 3"}'
    other = '{"subject": "pump P-3", "predicate": "vibration", "value": 11.2}'
    text = f'{{"facts": [{fact}, {other},\n {fact}, {{"subject": "pu'
    statements, rejected = check(text, PUMP, max_facts=5, cut=True)
    assert [s.predicate for s in statements] == ["located_in", "vibration"]
    assert rejected == ["1 verbatim repeats of earlier facts"]
    assert check('{"fa', PUMP, max_facts=5, cut=True)[0] == []


def test_a_cut_answer_is_reported_as_cut() -> None:
    brain = FakeBrain(
        ['{"facts": [{"subject": "pump P-3", "predicate": "located_in", "object": "hall 3"}, {"su']
    )
    brain.complete = _as_cut(brain.complete)  # type: ignore[method-assign]
    found = abstract(brain, Cluster(tuple(PUMP)), max_facts=5, max_tokens=64)
    assert [s.object for s in found.statements] == ["hall 3"]
    assert "cut at 64 tokens" in found.rejected[0]


def _as_cut(complete):  # type: ignore[no-untyped-def]
    return lambda *a, **kw: dataclasses.replace(complete(*a, **kw), stop_reason="length")


@pytest.mark.parametrize("text", ["", "{", '{"facts": 3}', '["facts"]', '{"other": []}'])
def test_an_answer_that_is_not_the_schema_is_rejected_whole(text: str) -> None:
    statements, rejected = check(text, PUMP, max_facts=5)
    assert statements == []
    assert "not a JSON object" in rejected[0]


def test_slugs_are_ids_made_of_the_name_words() -> None:
    assert slug("Pump P-3") == "pump-p-3"
    assert slug("  Hall 3 ") == "hall-3"
    assert slug("Größe der Halle") == "größe-der-halle"
    assert slug("--") == ""


# -- asking the model ----------------------------------------------------------------------------


def test_the_model_is_asked_under_the_schema_with_the_cluster_as_notes() -> None:
    brain = FakeBrain([answer({"subject": "pump P-3", "predicate": "located_in", "object": "hall 3"})])
    found = abstract(brain, Cluster(tuple(PUMP)), max_facts=5, max_tokens=64)
    assert brain.schemas == [SCHEMA]
    assert brain.prompts[0].endswith("Facts: ")
    assert all(e.text in brain.prompts[0] for e in PUMP)
    assert found.statements == (Statement("pump P-3", "located_in", object="hall 3"),)
    assert found.episodes == tuple(PUMP)


def test_episodes_that_do_not_fit_the_context_are_left_out_least_similar_first() -> None:
    cluster = Cluster(tuple(ep(str(i), vec(1), "word " * 100) for i in range(4)))
    header = len(prompt([]).split())
    brain = FakeBrain([answer()], n_ctx=header + 2 * 102 + 64 + 10)
    assert [e.key for e in fit(brain, cluster, 64)] == ["0", "1"]
    tiny = FakeBrain([answer()], n_ctx=10)
    assert [e.key for e in fit(tiny, cluster, 64)] == ["0"]  # the centre always goes (the brain refuses)


def test_the_prompt_header_is_the_same_for_every_cluster() -> None:
    # prefix reuse: only a cluster's notes are evaluated
    a, b = prompt(PUMP), prompt([ep("x", vec(1), "Conveyor C2 stopped twice.")])
    header = a[: a.index("Notes:\n- Pump")]
    assert b.startswith(header)


# -- prune commands, episodes, config ------------------------------------------------------------


def test_prune_commands_are_chunked_with_ids_stable_per_run_device_and_chunk() -> None:
    prune = {"edge-2": ["k1"], "edge-1": [f"k{i}" for i in range(PRUNE_CHUNK + 3)]}
    cmds = list(prune_commands("dream-1", prune, "hub:dreamer"))
    assert [(c.device_id, len(c.prune_episodes.keys)) for c in cmds] == [
        ("edge-1", PRUNE_CHUNK),
        ("edge-1", 3),
        ("edge-2", 1),
    ]
    assert all(c.prune_episodes.run_id == "dream-1" and c.issued_by == "hub:dreamer" for c in cmds)
    again = list(prune_commands("dream-1", prune, "hub:dreamer"))
    assert [c.command_id for c in cmds] == [c.command_id for c in again]
    assert len({c.command_id for c in cmds}) == 3
    assert cmds[0].command_id != next(prune_commands("dream-2", prune, "x")).command_id


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"embedding": (1.0,) * 10}, "embedding"),
        ({"embedding": (float("nan"),) * EMBEDDING_DIM}, "embedding"),
        ({"embedding": (0.0,) * EMBEDDING_DIM}, "embedding"),
        ({"at": datetime(2026, 3, 1)}, "at"),
        ({"importance": 1.5}, "importance"),
        ({"step": -1}, "step"),
        ({"text": "   "}, "text"),
        ({"key": ""}, "key"),
        ({"device_id": "x" * 600}, "device_id"),
    ],
)
def test_a_bad_episode_is_refused_naming_the_field(change: dict[str, object], field: str) -> None:
    good = ep("k", vec(1), "text")
    validate_episode(good)
    bad = dataclasses.replace(good, **change)  # type: ignore[arg-type]
    with pytest.raises(InvalidKnowledge) as exc:
        validate_episode(bad)
    assert exc.value.field == field
    assert good.id == "edge-1/k"


def test_dreamer_config_defaults_and_validation() -> None:
    cfg = load_config(env={})
    d = cfg.dreamer
    assert d.enabled
    assert d.model_path is None  # the edges' default GGUF
    assert (d.similarity, d.min_cluster, d.max_cluster, d.interval_s) == (0.5, 2, 8, 3600.0)
    env = {"EDGEHUB_HUB__DREAMER__INTERVAL_S": "0", "EDGEHUB_HUB__DREAMER__SIMILARITY": "0.7"}
    assert load_config(env=env).dreamer.interval_s == 0
    with pytest.raises(HubConfigError, match="max_cluster"):
        load_config(env={"EDGEHUB_HUB__DREAMER__MIN_CLUSTER": "9"})
    with pytest.raises(HubConfigError, match=r"dreamer\.similarity"):
        load_config(env={"EDGEHUB_HUB__DREAMER__SIMILARITY": "1.5"})
    with pytest.raises(HubConfigError, match=r"dreamer\.nope"):
        load_config(env={"EDGEHUB_HUB__DREAMER__NOPE": "1"})
