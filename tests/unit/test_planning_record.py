"""The goal record's one serialisation: the ``Goal`` message at schema version 3 (2 before goals had a
scope), and the JSON records of schema version 1 the previous release stored, read through the codec's
legacy decoder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edgehub.hub.goals.record import new_record, summary
from edgehub.hub.goals.store import CODEC
from edgehub.protocol.v1 import goals_pb2, scope_pb2
from edgehub.sync.records import RecordUnreadable

G = goals_pb2
V1 = Path(__file__).parent.parent / "data" / "goal_v1.json"
"""Written by the first release's own code (see tests/integration/test_goal_service.py)."""


def v1(**over: Any) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(V1.read_text())
    return record | over


def stored(record: dict[str, Any]) -> bytes:
    return json.dumps(record).encode()  # as the first release wrote it


def test_a_goal_round_trips_at_version_3_and_one_of_version_2_has_no_scope() -> None:
    scope = scope_pb2.Scope(selectors=[scope_pb2.LabelSelector(labels={"site": "a"})])
    record = new_record(
        "x", by="op", planner=G.GOAL_PLANNER_MODEL, labels={"site": "a"}, now=5.0, scope=scope
    )
    data = CODEC.encode(record)
    assert not data.startswith(b"{")
    assert CODEC.decode(data) == record
    assert CODEC.decode(data).schema_version == 3
    older = G.Goal(schema_version=2, goal_id="g-000000000002", text="x")  # the release before's
    assert not CODEC.decode(older.SerializeToString()).HasField("scope")  # the whole fleet


def test_a_version_1_record_reads_as_the_same_goal() -> None:
    goal = CODEC.decode(stored(v1()))
    assert (goal.schema_version, goal.goal_id, goal.status) == (3, "g-v1record0001", G.GOAL_STATUS_RUNNING)
    assert goal.planner == G.GOAL_PLANNER_OPERATOR
    assert not goal.HasField("parent")
    assert [t.id for t in goal.plan.tasks] == ["read-a", "restart-b", "report"]
    assert goal.tasks["restart-b"].status == G.TASK_STATUS_DISPATCHED
    assert goal.tasks["restart-b"].not_before == 1_750_000_008.0
    assert goal.tasks["report"].status == G.TASK_STATUS_WAITING
    assert goal.usage.tokens == 70
    assert len(goal.audit) == len(v1()["audit"])
    assert CODEC.decode(CODEC.encode(goal)) == goal  # written back as version 3, nothing lost


def test_a_finished_version_1_goal_keeps_its_answer_and_origin() -> None:
    goal = CODEC.decode(
        stored(v1(status="done", answer="both", answer_by="joined", finished_at=9.0, synthesis_error="x"))
    )
    assert (goal.status, goal.answer, goal.answer_by) == (G.GOAL_STATUS_DONE, "both", G.ANSWER_BY_JOINED)
    assert (goal.finished_at, goal.synthesis_error) == (9.0, "x")


def test_a_version_1_goal_left_planning_with_an_unreadable_plan_is_failed_with_the_reason() -> None:
    goal = CODEC.decode(stored(v1(status="planning", plan_json='{"tasks": [', revisions=[], tasks={})))
    assert goal.status == G.GOAL_STATUS_FAILED
    assert "no valid plan: the stored plan cannot be read" in goal.error
    assert not goal.HasField("plan")


@pytest.mark.parametrize(
    ("record", "why"),
    [
        (v1(schema_version=3), "a JSON goal record of schema version 3; only version 1 was JSON"),
        (v1(owner="someone"), "schema version 1 that cannot be read: .*owner"),
        (v1(tasks={"a": {"status": "lost"}}), "schema version 1 that cannot be read: .*TASK_STATUS_LOST"),
        (v1(usage={"tokens": -1}), "schema version 1 that cannot be read: .*tokens"),
    ],
    ids=["newer-version", "unknown-field", "unknown-status", "out-of-range"],
)
def test_json_that_is_not_a_version_1_goal_is_refused_not_half_read(record: dict[str, Any], why: str) -> None:
    with pytest.raises(RecordUnreadable, match=why):
        CODEC.decode(stored(record))


def test_bytes_that_are_neither_protobuf_nor_json_are_refused() -> None:
    with pytest.raises(RecordUnreadable, match="neither protobuf nor JSON"):
        CODEC.decode(b"{not json")


def test_a_summary_counts_the_tasks_by_status() -> None:
    goal = CODEC.decode(stored(v1()))
    brief = summary(goal)
    counts = {c.status: c.count for c in brief.tasks}
    assert counts == {G.TASK_STATUS_WAITING: 1, G.TASK_STATUS_DISPATCHED: 1, G.TASK_STATUS_DONE: 1}
    assert (brief.goal_id, brief.revision, brief.tokens) == (goal.goal_id, 1, 70)
