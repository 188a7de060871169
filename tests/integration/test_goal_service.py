"""The hub's GoalService against a real nats-server (JetStream KV, the commands stream), with a
scripted planner model (``FakeBrain``: the subject is what the hub does with the model's drafts, not the
model) and devices given as twins. Task results are handed in as the event applier does.

Covered: hostile drafts asked again then accepted, or the goal failed with every reason and nothing
dispatched; a task failing every attempt re-planned (revision 2 keeps what was done); sub-goals (a
child goal planned and run, its answer the parent task's result) and the depth limit; the goal's
token budget; a second hub process continuing a goal; malformed results ignored; a goal stored by the
previous release (JSON, schema version 1) read and carried on.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from nats.aio.client import Client
from prometheus_client import CollectorRegistry

from edgehub.hub.config import PlannerConfig
from edgehub.hub.errors import GoalError
from edgehub.hub.fleet.devices import TWINS
from edgehub.hub.goals import DeviceView
from edgehub.hub.goals.record import new_record
from edgehub.hub.goals.service import GoalService
from edgehub.llm.fake import FakeBrain
from edgehub.protocol import subjects
from edgehub.protocol.v1 import agent_pb2, commands_pb2, events_pb2, goals_pb2, task_pb2
from edgehub.sync import NatsServer
from edgehub.sync.records import RecordStore, TextCodec
from edgehub.sync.streams import GOALS
from tests.harness.nats import connect, nats_server  # noqa: F401 - fixture

S = agent_pb2
G = goals_pb2
TOOLS = ["finish", "read_file", "run_command"]


def twin(device: str, running: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "device_id": device,
        "state": "running",
        "sent_at": time.time(),
        "heartbeat_s": 5,
        "tools": TOOLS,
        "max_concurrent": 4,
        "agents_running": list(running),
    }


def draft(*tasks: tuple[str, list[str]], subgoal: str = "") -> str:
    return json.dumps(
        {
            "tasks": [
                {"id": t, "goal": f"do {t}", "needs": needs, "tools": [], "estimate_tokens": 100}
                | ({"subgoal": True} if t == subgoal else {})
                for t, needs in tasks
            ]
        }
    )


def plan(*tasks: tuple[str, list[str]], subgoal: str = "") -> G.PlanDraft:
    """An operator's plan (the draft's JSON read into the message, as the CLI does)."""
    return json_format.Parse(draft(*tasks, subgoal=subgoal), G.PlanDraft())


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:  # noqa: F811 - the fixture above
    client = await connect(nats_server)
    yield client
    await client.close()


def service(
    nc: Client,
    script: list[str] | Callable[[str], str] | None = None,
    metrics: CollectorRegistry | None = None,
    **cfg: Any,
) -> tuple[GoalService, list[dict[str, Any]], FakeBrain]:
    devices = [twin("dev-a"), twin("dev-b")]

    async def twins() -> list[DeviceView]:
        return [DeviceView.from_twin(TWINS.decode(json.dumps(t).encode()), time.time()) for t in devices]

    brain = FakeBrain(script if script is not None else [])
    settings = PlannerConfig(retry_backoff_s=0, tick_s=0.1, **cfg)
    return GoalService(nc.jetstream(), twins, settings, brain=brain, metrics=metrics), devices, brain


def result(record: G.Goal, tid: str, status: int = S.AGENT_STATUS_FINISHED, tokens: int = 10) -> Any:
    state = record.tasks[tid]
    r = task_pb2.TaskResult(
        task_id=f"{record.goal_id}/{tid}",
        agent_id=state.agent_id,
        status=status,
        answer=f"answer of {tid}",
        failure_reason="" if status == S.AGENT_STATUS_FINISHED else "the tool broke",
    )
    r.usage.completion_tokens = tokens
    r.usage.tool_calls = 1
    return r


async def commands(nc: Client) -> list[commands_pb2.Command]:
    """Every command the hub queued, oldest first."""
    sub = await nc.jetstream().pull_subscribe(subjects.ALL_COMMANDS, stream=subjects.COMMANDS_STREAM)
    out = []
    try:
        while True:
            msgs = await sub.fetch(100, timeout=0.3)
            out += [commands_pb2.Command.FromString(m.data) for m in msgs]
    except TimeoutError:
        pass
    finally:
        await sub.unsubscribe()
    return out


async def test_hostile_drafts_are_asked_again_then_the_valid_one_runs(nc: Client) -> None:
    script = [
        draft(("a", ["b"]), ("b", ["a"])),  # a cycle
        '{"tasks": [{"id": "a", "goal": "x"',  # cut short
        draft(("a", []), ("b", ["a"])),
    ]
    goals, _, brain = service(nc, script)
    record = await goals.submit("read a then b", by="test")
    assert record.status == G.GOAL_STATUS_RUNNING
    rev = record.revisions[0]
    assert rev.drafts == 3
    assert "cycle" in rev.rejected[0]
    assert "not valid JSON" in rev.rejected[1]
    # the model was told why: the reasons are in the later prompts
    assert "cycle" in brain.prompts[1]
    assert "not valid JSON" in brain.prompts[2]
    # a's StartAgent went out; b waits for a
    assert record.tasks["a"].status == G.TASK_STATUS_DISPATCHED
    assert record.tasks["b"].status == G.TASK_STATUS_WAITING
    sent = [c for c in await commands(nc) if c.WhichOneof("body") == "start_agent"]
    assert [c.start_agent.task_id for c in sent] == [f"{record.goal_id}/a"]
    assert sent[0].start_agent.budget.max_tokens > 0


async def test_a_model_that_never_writes_a_valid_plan_fails_the_goal_and_sends_nothing(nc: Client) -> None:
    goals, _, _ = service(nc, ["[]", "not json", draft(("a", ["a2"]), ("a2", ["a"]))], attempts=3)
    record = await goals.submit("anything", by="test")
    assert record.status == G.GOAL_STATUS_FAILED
    assert "3 drafts rejected" in record.error
    assert "cycle" in record.error
    assert not record.revisions
    assert not await commands(nc)


async def test_a_task_failing_every_attempt_is_replanned_keeping_what_was_done(nc: Client) -> None:
    first = draft(("a", []), ("b", ["a"]))
    second = draft(("b2", []), ("c", ["b2"]))
    goals, _, brain = service(nc, [first, second], max_retries=1, max_replans=1)
    record = await goals.submit("a then b", by="test")
    gid = record.goal_id
    await goals.on_result(result(record, "a"), "dev-a")
    record = await goals.get(gid)
    for _ in range(2):  # the first attempt and its one retry fail
        record = await wait_until(goals, gid, lambda r: r.tasks["b"].status == G.TASK_STATUS_DISPATCHED)
        await goals.on_result(result(record, "b", S.AGENT_STATUS_FAILED), record.tasks["b"].device)
    record = await wait_until(goals, gid, lambda r: len(r.revisions) == 2)
    assert record.revisions[1].reason.startswith("task b failed 2 times")
    assert record.tasks["a"].status == G.TASK_STATUS_DONE  # kept, not run again
    assert record.tasks["b"].status == G.TASK_STATUS_FAILED
    assert "Already done" in brain.prompts[-1]
    assert "a: answer of a" in brain.prompts[-1]
    assert "task b failed 2 times" in brain.prompts[-1]
    assert record.replans == 1
    record = await wait_until(goals, gid, lambda r: r.tasks["b2"].status == G.TASK_STATUS_DISPATCHED)
    await goals.on_result(result(record, "b2"), "dev-a")
    record = await wait_until(goals, gid, lambda r: r.tasks["c"].status == G.TASK_STATUS_DISPATCHED)
    await goals.on_result(result(record, "c"), "dev-b")
    record = await goals.get(gid)
    assert record.status == G.GOAL_STATUS_DONE
    assert record.answer == "answer of c"
    # the second attempt went to the other device (a retry prefers one it has not failed on)
    b = record.tasks["b"].attempts
    assert b[0].device != b[1].device


async def test_a_subgoal_is_planned_and_run_and_its_answer_is_the_parent_tasks(nc: Client) -> None:
    child_plan = draft(("x", []), ("y", []))
    goals, _, _ = service(nc, [child_plan, json.dumps({"answer": "x and y, together"})], max_goal_depth=1)
    parent = await goals.submit("inspect", by="test", plan=plan(("sub", []), subgoal="sub"))
    gid = parent.goal_id
    sub = parent.tasks["sub"]
    assert sub.status == G.TASK_STATUS_DISPATCHED
    assert sub.device == "hub"
    child_id = sub.subgoal_id
    child = await wait_until(goals, child_id, lambda r: r.status == G.GOAL_STATUS_RUNNING)
    assert child.parent == G.GoalParent(goal_id=gid, task_id="sub")
    assert child.depth == 1
    for tid in ("x", "y"):
        await goals.on_result(result(child, tid, tokens=7), "dev-a")
    child = await wait_until(goals, child_id, lambda r: r.status == G.GOAL_STATUS_DONE)
    assert child.answer == "x and y, together"  # the child's two last tasks, synthesised
    parent = await wait_until(goals, gid, lambda r: r.status == G.GOAL_STATUS_DONE)
    assert parent.tasks["sub"].answer == child.answer
    assert parent.answer == "x and y, together"
    assert parent.usage.tokens == 14


async def finish_all(goals: GoalService, gid: str, tids: tuple[str, ...], last: bool = True) -> G.Goal:
    """Tasks ``tids`` report done (the answer of each: ``answer of ID``); with ``last``, until the goal
    ends."""
    record = await wait_until(
        goals, gid, lambda r: all(r.tasks[t].status == G.TASK_STATUS_DISPATCHED for t in tids)
    )
    for tid in tids:
        await goals.on_result(result(record, tid), "dev-a")
    return await wait_until(
        goals, gid, lambda r: not last or r.status in (G.GOAL_STATUS_DONE, G.GOAL_STATUS_FAILED)
    )


async def test_a_plan_ending_in_several_tasks_gets_its_answer_synthesised_by_the_planner(nc: Client) -> None:
    goals, _, brain = service(nc, [json.dumps({"answer": "  A is 3 and B is 4; B is higher. "})])
    record = await goals.submit("compare A and B", by="test", plan=plan(("a", []), ("b", [])))
    record = await finish_all(goals, record.goal_id, ("a", "b"))
    assert record.status == G.GOAL_STATUS_DONE
    assert record.answer == "A is 3 and B is 4; B is higher."
    assert record.answer_by == G.ANSWER_BY_PLANNER
    assert not record.synthesis_error
    # the model was given the goal and both results, constrained to the answer's schema
    assert "Goal: compare A and B" in brain.prompts[-1]
    assert "- a: answer of a" in brain.prompts[-1]
    assert "- b: answer of b" in brain.prompts[-1]
    assert brain.schemas[-1] is not None
    assert brain.schemas[-1]["required"] == ["answer"]
    assert record.usage.planner_tokens > 0
    assert "answer synthesised by the planner" in record.audit[-1].what


@pytest.mark.parametrize(
    "model",
    ["not json at all", json.dumps({"answer": "   "}), json.dumps({"answer": "a" + "1" * 40}), "raise"],
)
async def test_a_synthesis_the_model_botches_leaves_the_tasks_answers_joined(nc: Client, model: str) -> None:
    def botch(prompt: str) -> str:
        if model == "raise":
            raise RuntimeError("llama.cpp fell over")
        return model

    goals, _, _ = service(nc, botch)
    record = await goals.submit("compare", by="test", plan=plan(("a", []), ("b", [])))
    record = await finish_all(goals, record.goal_id, ("a", "b"))
    assert record.status == G.GOAL_STATUS_DONE  # the tasks' work is not lost to a bad synthesis
    assert record.answer == "a: answer of a\nb: answer of b"
    assert record.answer_by == G.ANSWER_BY_JOINED
    expected = {
        "raise": "RuntimeError: llama.cpp fell over",
        "not json at all": "not the answer's JSON",
        json.dumps({"answer": "   "}): "the answer is blank",
    }
    assert expected.get(model, "the answer repeats '1' over and over") in record.synthesis_error


async def test_one_last_task_or_synthesis_off_needs_no_model(nc: Client) -> None:
    goals, _, brain = service(nc)  # an empty script: any model call would fail the synthesis
    record = await goals.submit("x", by="test", plan=plan(("a", []), ("b", ["a"])))
    record = await finish_all(goals, record.goal_id, ("a",), last=False)
    record = await finish_all(goals, record.goal_id, ("b",))
    assert (record.answer, record.answer_by) == ("answer of b", G.ANSWER_BY_TASK)
    goals, _, brain = service(nc, synthesise=False)
    record = await goals.submit("x", by="test", plan=plan(("a", []), ("b", [])))
    record = await finish_all(goals, record.goal_id, ("a", "b"))
    assert (record.answer, record.answer_by) == ("a: answer of a\nb: answer of b", G.ANSWER_BY_JOINED)
    assert not brain.prompts


async def test_goals_ended_are_counted_by_final_status(nc: Client) -> None:
    metrics = CollectorRegistry()
    goals, _, _ = service(nc, ["[]"], metrics, attempts=1)

    def ended(status: str) -> float | None:
        return metrics.get_sample_value("edgehub_hub_goals_ended_total", {"status": status})

    done = await goals.submit("x", by="test", plan=plan(("a", [])))
    await finish_all(goals, done.goal_id, ("a",))
    failed = await goals.submit("no plan comes", by="test")  # the model's one draft is not a plan
    running = await goals.submit("y", by="test", plan=plan(("b", [])))
    await goals.cancel(running.goal_id, by="test")
    assert failed.status == G.GOAL_STATUS_FAILED
    assert (ended("done"), ended("failed"), ended("cancelled")) == (1.0, 1.0, 1.0)
    assert ended("running") is None


async def test_a_subgoal_beyond_the_depth_limit_is_refused(nc: Client) -> None:
    goals, _, _ = service(nc, [], max_goal_depth=0, max_retries=0)
    record = await goals.submit("x", by="test", plan=plan(("sub", []), subgoal="sub"))
    assert record.status == G.GOAL_STATUS_FAILED
    assert "sub-goals, but the goal depth limit is reached" in record.error
    assert not await commands(nc)


async def test_a_plan_over_the_token_budget_is_rejected(nc: Client) -> None:
    goals, _, _ = service(nc)
    record = await goals.submit(
        "x", by="test", plan=plan(("a", []), ("b", [])), budget=G.GoalBudget(max_tokens=150)
    )
    assert record.status == G.GOAL_STATUS_FAILED
    assert "estimate 200 tokens in total; the goal's budget is 150" in record.error


async def test_a_spent_token_budget_fails_the_goal_and_stops_its_running_tasks(nc: Client) -> None:
    goals, _, _ = service(nc)
    given = plan(("a", []), ("b", []))
    record = await goals.submit("x", by="test", plan=given, budget=G.GoalBudget(max_tokens=250))
    await goals.on_result(result(record, "a", tokens=300), "dev-a")
    record = await goals.get(record.goal_id)
    assert record.status == G.GOAL_STATUS_FAILED
    assert "token budget spent: 300 tokens of 250" in record.error
    stops = [c for c in await commands(nc) if c.WhichOneof("body") == "stop_agent"]
    assert [c.stop_agent.agent_id for c in stops] == [record.tasks["b"].agent_id]
    assert record.tasks["b"].status == G.TASK_STATUS_CANCELLED


async def test_another_hub_process_continues_a_goal(nc: Client) -> None:
    one, _, _ = service(nc)
    record = await one.submit("x", by="test", plan=plan(("a", []), ("b", ["a"])))
    other, _, _ = service(nc)  # a second hub process: it learns the goal from its watch
    stop = asyncio.Event()
    watching = asyncio.create_task(other.watch(stop))
    await until(lambda: record.goal_id in other.store.active)
    stop.set()
    await watching
    await other.on_result(result(record, "a"), "dev-a")
    record = await other.get(record.goal_id)
    assert record.tasks["b"].status == G.TASK_STATUS_DISPATCHED
    # the first process's stale view does not undo it: its next tick reads, then compares-and-sets
    await one.tick()
    assert (await one.get(record.goal_id)).tasks["b"].agent_id == record.tasks["b"].agent_id


async def test_results_that_do_not_fit_are_ignored(nc: Client) -> None:
    goals, _, _ = service(nc)
    record = await goals.submit("x", by="test", plan=plan(("a", [])))
    gid = record.goal_id
    stale = result(record, "a")
    stale.agent_id = f"{gid}-a-0"  # an attempt the goal moved on from
    await goals.on_result(stale, "dev-b")
    bad = task_pb2.TaskResult(task_id="no-slash", agent_id="x")
    await goals.on_result(bad, "dev-b")
    unknown = task_pb2.TaskResult(task_id="g-unknown/a", agent_id="x")
    await goals.on_result(unknown, "dev-b")
    record = await goals.get(gid)
    assert record.tasks["a"].status == G.TASK_STATUS_DISPATCHED
    assert record.usage.tokens == 0


async def test_operators_get_clear_errors(nc: Client) -> None:
    goals, _, _ = service(nc)
    with pytest.raises(GoalError, match="empty"):
        await goals.submit("  ", by="test")
    with pytest.raises(GoalError, match="at most 4000"):
        await goals.submit("x" * 5000, by="test")
    with pytest.raises(GoalError, match="negative"):  # counts are unsigned in the message; seconds are not
        await goals.submit("x", by="test", budget=G.GoalBudget(max_wall_seconds=-1))
    record = await goals.submit("x", by="test", plan=plan(("a", [])))
    with pytest.raises(GoalError, match="not awaiting approval"):
        await goals.decide(record.goal_id, "a", True, "op")
    with pytest.raises(GoalError, match="no task"):
        await goals.decide(record.goal_id, "zzz", True, "op")
    cancelled = await goals.cancel(record.goal_id, "op", "changed my mind")
    assert cancelled.status == G.GOAL_STATUS_CANCELLED
    with pytest.raises(GoalError, match="already cancelled"):
        await goals.cancel(record.goal_id, "op")


async def wait_until(
    goals: GoalService, goal_id: str, ok: Callable[[G.Goal], bool], within: float = 10
) -> G.Goal:
    deadline = time.monotonic() + within
    while True:
        with_error = None
        try:
            record = await goals.get(goal_id)
            if ok(record):
                return record
        except GoalError as exc:
            with_error = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"goal {goal_id}: condition not met ({with_error or record})")
        await goals.tick()
        await asyncio.sleep(0.05)


async def test_an_oversized_answer_is_cut_so_the_record_stays_writable(nc: Client) -> None:
    goals, _, _ = service(nc)
    record = await goals.submit("x", by="test", plan=plan(("a", [])))
    huge = result(record, "a")
    huge.answer = "y" * 900_000  # a hostile device's answer, near NATS's 1 MB message limit
    assert await goals.on_events([_event(huge, "dev-a")]) == []
    record = await goals.get(record.goal_id)
    assert record.status == G.GOAL_STATUS_DONE
    assert record.answer == "y" * 8000


def _event(r: Any, device: str) -> Any:
    event = events_pb2.EdgeEvent(event_id=f"task/{r.agent_id}", device_id=device, agent_id=r.agent_id)
    event.task_result.CopyFrom(r)
    return event


async def test_oversized_selectors_and_rules_are_refused(nc: Client) -> None:
    goals, _, _ = service(nc)
    with pytest.raises(GoalError, match="labels: at most 32 entries"):
        await goals.submit("x", by="test", labels={f"k{i}": "v" for i in range(33)})
    with pytest.raises(GoalError, match="labels: at most 32 entries of 1 to 64"):
        await goals.submit("x", by="test", labels={"site": "v" * 65})
    with pytest.raises(GoalError, match="approve_tools"):
        await goals.submit("x", by="test", approve_tools=[""])


async def until(ok: Callable[[], bool], within: float = 10) -> None:
    deadline = time.monotonic() + within
    while not ok():
        assert time.monotonic() < deadline, "condition not met"
        await asyncio.sleep(0.05)


async def test_ended_goals_are_pruned_after_the_retention(nc: Client) -> None:
    goals, _, _ = service(nc, keep_ended_days=1)
    record = await goals.submit("x", by="test", plan=plan(("a", [])))
    await goals.cancel(record.goal_id, "op")
    assert await goals.prune(time.time()) == 0  # ended just now: kept
    assert await goals.prune(time.time() + 2 * 86400) == 1
    with pytest.raises(GoalError, match="no goal"):
        await goals.get(record.goal_id)


async def test_a_goal_left_in_planning_by_a_dead_hub_is_planned_again(nc: Client) -> None:
    goals, _, _ = service(nc, [draft(("a", []))])
    orphan = new_record("x", by="op", labels={}, budget=None, approve_tools=[], planner=G.GOAL_PLANNER_MODEL)
    assert await goals.store.create(orphan)  # stored by a hub process that died before planning it
    goals.work.resume_orphans(time.time())  # just written: not an orphan yet
    assert not goals.work.running
    goals.work.resume_orphans(time.time() + 3600)
    await asyncio.gather(*goals.work.running.values())
    record = await goals.get(orphan.goal_id)
    assert record.status == G.GOAL_STATUS_RUNNING
    assert len(record.revisions) == 1


async def test_a_goal_left_synthesising_by_a_dead_hub_is_synthesised_again(nc: Client) -> None:
    goals, _, _ = service(nc, synthesise=False)
    record = await goals.submit("x", by="test", plan=plan(("a", []), ("b", [])))
    gid = record.goal_id
    record = await wait_until(goals, gid, lambda r: r.tasks["b"].status == G.TASK_STATUS_DISPATCHED)
    for tid in ("a", "b"):  # finished, as a hub process that died before its synthesis stored it
        record.tasks[tid].status, record.tasks[tid].answer = G.TASK_STATUS_DONE, f"answer of {tid}"
    record.status = G.GOAL_STATUS_SYNTHESISING
    found = await goals.store.get(gid)
    assert found is not None
    await goals.store.records.replace(gid, record, found.revision)
    later, _, _ = service(nc, [json.dumps({"answer": "both done"})])  # another hub process, later
    await later.tick()  # a synthesising goal is the model's to move on, not the scheduler's
    assert (await later.get(gid)).status == G.GOAL_STATUS_SYNTHESISING
    later.store.remember(record, found.revision + 1)
    later.work.resume_orphans(time.time() + 3600)
    await asyncio.gather(*later.work.running.values())
    record = await later.get(gid)
    assert (record.status, record.answer, record.answer_by) == (
        G.GOAL_STATUS_DONE,
        "both done",
        G.ANSWER_BY_PLANNER,
    )


V1_RECORD = Path(__file__).parent.parent / "data" / "goal_v1.json"
"""A goal stored by the first release (schema version 1, JSON), written by its own code (``hub/src`` at
commit 8a161e0: ``new_record``, ``adopt_plan``, ``advance``, ``apply_result`` and an approval as its
``decide`` made it): read-a done on dev-a, restart-b approved, failed once on dev-a and dispatched
again to dev-b, report waiting for both."""


async def test_a_goal_stored_by_the_previous_release_is_read_and_carried_on(nc: Client) -> None:
    goals, _, _ = service(nc)
    v1 = json.loads(V1_RECORD.read_text())
    gid = v1["goal_id"]
    raw: RecordStore[str] = RecordStore(nc.jetstream(), GOALS.name, TextCodec())
    await raw.put(gid, json.dumps(v1))  # byte for byte what the first release stored
    record = await goals.get(gid)
    assert (record.schema_version, record.status, record.planner) == (
        3,
        G.GOAL_STATUS_RUNNING,
        G.GOAL_PLANNER_OPERATOR,
    )
    assert (record.text, record.submitted_by, record.submitted_at) == (v1["text"], "op", 1_750_000_000.0)
    assert record.budget == G.GoalBudget(max_tokens=50000, max_wall_seconds=1e10)
    assert list(record.approve_tools) == ["run_command"]
    assert [t.id for t in record.plan.tasks] == ["read-a", "restart-b", "report"]
    assert [(t.id, list(t.needs), t.level) for t in record.revisions[0].tasks] == [
        ("read-a", [], 0),
        ("restart-b", [], 0),
        ("report", ["read-a", "restart-b"], 1),
    ]
    a, b, c = (record.tasks[t] for t in ("read-a", "restart-b", "report"))
    assert (a.status, a.answer, a.device, a.usage.tokens) == (
        G.TASK_STATUS_DONE,
        "answer of read-a",
        "dev-a",
        40,
    )
    assert (b.status, b.attempt, b.device) == (G.TASK_STATUS_DISPATCHED, 2, "dev-b")
    assert b.attempts[0].reason.endswith("the tool broke")
    assert (b.approval.approve, b.approval.by, b.approval.note) == (True, "op", "line B is idle")
    assert c.status == G.TASK_STATUS_WAITING
    assert record.usage.by_device["dev-a"] == G.DeviceUsage(tokens=70, tool_calls=2, tasks=2)
    assert [e.what for e in record.audit] == [e["what"] for e in v1["audit"]]
    # the goal goes on: restart-b's result dispatches the report, and the record is stored as version 3
    await goals.on_result(result(record, "restart-b"), "dev-b")
    record = await goals.get(gid)
    assert record.tasks["restart-b"].status == G.TASK_STATUS_DONE
    assert record.tasks["report"].status == G.TASK_STATUS_DISPATCHED
    stored = await _raw_bytes(nc, gid)
    assert not stored.startswith(b"{")
    assert G.Goal.FromString(stored).schema_version == 3
    await goals.on_result(result(record, "report"), "dev-a")
    record = await goals.get(gid)
    assert (record.status, record.answer, record.answer_by) == (
        G.GOAL_STATUS_DONE,
        "answer of report",
        G.ANSWER_BY_TASK,
    )


async def _raw_bytes(nc: Client, goal_id: str) -> bytes:
    """The bytes stored for the goal."""
    found = await RecordStore(nc.jetstream(), GOALS.name, Raw()).get(goal_id)
    assert found is not None
    return found.value


class Raw:
    """A codec that leaves the bytes as they are."""

    def encode(self, value: bytes) -> bytes:
        return value

    def decode(self, data: bytes) -> bytes:
        return data


async def test_a_version_1_record_that_is_not_a_goal_is_refused_with_a_clear_error(nc: Client) -> None:
    goals, _, _ = service(nc)
    raw: RecordStore[str] = RecordStore(nc.jetstream(), GOALS.name, TextCodec())
    await raw.put(
        "g-odd", json.dumps({"schema_version": 1, "goal_id": "g-odd", "tasks": {"a": {"status": "lost"}}})
    )
    with pytest.raises(GoalError, match="schema version 1 that cannot be read"):
        await goals.get("g-odd")
