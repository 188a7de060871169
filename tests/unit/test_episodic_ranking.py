"""L3 re-ranking logic: similarity x recency x importance, and what a step contributes as an episode."""

from __future__ import annotations

import pytest

from edgehub.edge.memory.episodic import EpisodicMemory, step_importance, step_text
from edgehub.edge.store.base import Episode
from edgehub.protocol.v1 import agent_pb2

S = agent_pb2
DAY = 24 * 3600.0
NOW = 1_000_000_000.0


def memory(half_life_s: float = 7 * DAY) -> EpisodicMemory:
    return EpisodicMemory(store=None, embedder=None, half_life_s=half_life_s, clock=lambda: NOW)  # type: ignore[arg-type]


def ep(key: str, distance: float, age_s: float = 0.0, importance: float = 0.5) -> Episode:
    return Episode(key, "a", key, NOW - age_s, importance, 0, distance=distance)


def test_equal_similarity_prefers_the_recent_and_the_important() -> None:
    ranked = memory().rank([ep("old", 0.2, age_s=30 * DAY), ep("new", 0.2, age_s=DAY)], 2)
    assert [r.episode.key for r in ranked] == ["new", "old"]
    ranked = memory().rank([ep("routine", 0.2, importance=0.1), ep("failure", 0.2, importance=0.9)], 2)
    assert [r.episode.key for r in ranked] == ["failure", "routine"]


def test_a_much_closer_memory_beats_recency_and_one_half_life_halves_the_score() -> None:
    ranked = memory().rank([ep("close-but-old", 0.05, age_s=7 * DAY), ep("far-but-new", 0.7)], 1)
    assert ranked[0].episode.key == "close-but-old"
    (fresh,), (week,) = memory().rank([ep("x", 0.2)], 1), memory().rank([ep("x", 0.2, age_s=7 * DAY)], 1)
    assert week.score == pytest.approx(fresh.score / 2)
    assert fresh.similarity == pytest.approx(0.8)
    (no_decay,) = memory(half_life_s=0).rank([ep("x", 0.2, age_s=365 * DAY)], 1)
    assert no_decay.score == pytest.approx(0.8 * 0.75)


def test_steps_become_short_episodes_and_failures_or_outcomes_matter_more() -> None:
    step = S.StepEvent(kind=S.STEP_KIND_ACTION, thought="Read the sensor")
    step.action.tool, step.action.args_json = "read_sensor", '{"id": "P-3"}'
    step.observation.ok, step.observation.output = True, "11.2 mm/s" + "x" * 2000
    assert step_text(step).startswith("Read the sensor: P-3 (read_sensor -> 11.2 mm/s")
    assert len(step_text(step)) == 600
    assert step_importance(step) == 0.5
    step.observation.ok, step.observation.error = False, "timeout"
    assert step_importance(step) == 0.8
    end = S.StepEvent(kind=S.STEP_KIND_END, detail="green")
    assert (step_text(end), step_importance(end)) == ("Finished: green", 0.9)


class OneAgent:
    """The store's one agent, finished and verified."""

    def load_agent(self, agent_id: str) -> agent_pb2.AgentState:
        return S.AgentState(
            agent_id=agent_id, goal="How warm is hall 3?", verification=S.VERIFICATION_VERIFIED
        )


@pytest.mark.parametrize(("answer", "kept"), [("21 degrees", True), ("Noted.", False), ("done", False)])
def test_a_finished_agent_leaves_its_outcome_unless_the_answer_only_acknowledges(
    answer: str, kept: bool
) -> None:
    mem = EpisodicMemory(store=OneAgent(), embedder=None, clock=lambda: NOW)  # type: ignore[arg-type]
    end = S.StepEvent(agent_id="a", kind=S.STEP_KIND_ACTION, status=S.AGENT_STATUS_FINISHED, step=2)
    end.action.tool, end.observation.output = "finish", answer
    outcome = mem._outcome(end)
    assert (outcome is not None) == kept
    if outcome is not None:
        assert "How warm is hall 3?" in outcome.text
        assert answer in outcome.text
