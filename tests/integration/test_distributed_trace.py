"""One trace from goal to step, read back from a real Jaeger: a real hub (subprocess, embedded
nats-server) and two enrolled edge daemons (each its own process) export over OTLP/gRPC to the Jaeger
the test starts (tests/harness/jaeger.py); a goal is submitted through the CLI with a ``TRACEPARENT`` of
the test's own, so the trace crosses gRPC metadata (CLI -> hub API), NATS headers (the StartAgent
commands hub -> edges, the step events edges -> hub) and the edges' durable state (the agent's
``trace_parent``, the outbox's ``traceparent``).

The edges' brain is scripted (one ``run_command`` step, then ``finish``): the subject is the trace,
not the model.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.edge_proc import start_edge, stop_edges
from tests.harness.hub import Hub, start_hub
from tests.harness.jaeger import Jaeger, jaeger  # noqa: F401 - fixture
from tests.harness.wait import assert_eventually

DEVICES = ("dev-t1", "dev-t2")
SCRIPT = "tests.integration.test_distributed_trace:worker"
ENDED = ("GOAL_STATUS_DONE", "GOAL_STATUS_FAILED", "GOAL_STATUS_CANCELLED")


def worker(prompt: str) -> str:
    """A task's agent: one ``sleep`` (long enough that both tasks overlap, so each device takes one),
    then it finishes; a ``slow`` task takes a second, long step (the time to kill its daemon in)."""
    task = prompt.split("## Task\n", 1)[1]
    slow = "slow" in task.split("\n", 1)[0]
    if "Step 1 observation" not in task:
        return _act("run_command", command="sleep 2")
    if slow and "Step 2 observation" not in task:
        return _act("run_command", command="sleep 8")
    return _act("finish", answer="read")


def _act(tool: str, **args: str) -> str:
    return json.dumps({"thought": "work", "tool": tool, "args": args})


class TracedFleet:
    def __init__(self, tmp: Path, otlp: str) -> None:
        self.tmp = tmp
        self.hub: Hub = start_hub(
            tmp,
            "hub-trace",
            env={
                "EDGEHUB_HUB__PLANNER__RETRY_BACKOFF_S": "0.5",
                "EDGEHUB_HUB__PLANNER__TICK_S": "0.5",
                "EDGEHUB_HUB__DREAMER__ENABLED": "false",
                "EDGEHUB_HUB__TRACING__OTLP_ENDPOINT": otlp,
                "OTEL_BSP_SCHEDULE_DELAY": "200",  # spans leave within 0.2 s, not 5
            },
        )
        self.otlp = otlp
        self.edges: dict[str, subprocess.Popen[str]] = {}
        try:
            self.hub.wait_ready(timeout=90)
            for device in DEVICES:
                done = self.hub.enroll(device, tmp / device)
                assert done.returncode == 0, done.stderr
                self.start(device)
            assert_eventually(lambda: all(self.online(d) for d in DEVICES), timeout=60, what="edges online")
        except BaseException:
            self.stop()
            raise

    def start(self, device: str) -> None:
        config = {
            "device": {"id": device, "data_dir": str(self.tmp / device)},
            "tools": {"load_entry_points": False},
            # online for 3 beats after its last: a daemon killed and started again within 30 s keeps
            # its task (the hub does not reassign it), so the agent resumes where it was
            "hub": {"heartbeat_s": 10},
            "tracing": {"otlp_endpoint": self.otlp, "service_name": f"edgehub-edge-{device}"},
        }
        self.edges[device] = start_edge(config, SCRIPT, env={"OTEL_BSP_SCHEDULE_DELAY": "200"})

    def online(self, device: str) -> bool:
        done = self.hub.cli("devices", "list", "--json")
        twins = [json.loads(line) for line in done.stdout.splitlines()] if done.returncode == 0 else []
        return any(t["device_id"] == device and t.get("online") for t in twins)

    def goal(self, goal_id: str) -> dict[str, Any]:
        done = self.hub.cli("goal", "show", goal_id, "--json")
        assert done.stdout, done.stderr
        record: dict[str, Any] = json.loads(done.stdout)
        return record

    def stop(self) -> None:
        stop_edges(self.edges.values())
        (self.tmp / "hub.log").write_text(self.hub.stop())


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, jaeger: Jaeger) -> Iterator[TracedFleet]:  # noqa: F811
    f = TracedFleet(tmp_path_factory.mktemp("trace"), jaeger.otlp_endpoint)
    try:
        yield f
    finally:
        f.stop()


def _task(tid: str, goal: str) -> dict[str, Any]:
    return {"id": tid, "goal": goal, "needs": [], "tools": ["run_command"], "estimate_tokens": 500}


FORK = {"tasks": [_task("read-a", "Read line A"), _task("read-b", "Read line B")]}


def _parent(span: dict[str, Any]) -> str:
    """The span id of the span's CHILD_OF parent ('' for a root)."""
    refs = [r for r in span.get("references", []) if r.get("refType") == "CHILD_OF"]
    return str(refs[0]["spanID"]) if refs else ""


def _tag(span: dict[str, Any], key: str) -> Any:
    return next((t["value"] for t in span.get("tags", []) if t["key"] == key), None)


def test_a_two_device_goal_is_one_trace_from_the_api_call_to_every_step(
    fleet: TracedFleet,
    jaeger: Jaeger,  # noqa: F811
) -> None:
    trace_id, caller = secrets.token_hex(16), secrets.token_hex(8)
    plan = fleet.tmp / "fork.json"
    plan.write_text(json.dumps(FORK))
    done = fleet.hub.cli(
        "goal", "submit", "read two lines", "--plan", str(plan), "--json",
        env={"TRACEPARENT": f"00-{trace_id}-{caller}-01"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    goal_id = json.loads(done.stdout)["goal_id"]
    record = assert_eventually(
        lambda: (g := fleet.goal(goal_id))["status"] in ENDED and g, timeout=120, what="the goal to end"
    )
    assert record["status"] == "GOAL_STATUS_DONE", record.get("error")
    a, b = record["tasks"]["read-a"], record["tasks"]["read-b"]
    assert {a["device"], b["device"]} == set(DEVICES), "both tasks ran on one device"
    assert record["trace_parent"].split("-")[1] == trace_id  # the goal joined the caller's trace

    def whole() -> list[dict[str, Any]] | None:
        spans = jaeger.trace(trace_id)
        names = [s["operationName"] for s in spans]
        steps = names.count("agent.step")
        applied = names.count("event.applied")
        ended = names.count("goal.ended")
        return spans if names.count("agent.run") >= 2 and steps >= 4 and applied >= 4 and ended else None

    spans = assert_eventually(whole, timeout=60, what=lambda: f"the whole trace: {jaeger.trace(trace_id)}")
    assert {s["traceID"] for s in spans} == {trace_id}
    by_id = {s["spanID"]: s for s in spans}
    named = lambda name: [s for s in spans if s["operationName"] == name]  # noqa: E731

    # CLI -> hub API (gRPC metadata): the server span is the child of the caller's span
    (server,) = [s for s in spans if _parent(s) == caller]
    assert server["operationName"].endswith("/SubmitGoal"), server["operationName"]
    assert server["service"] == "edgehub-hub"
    (goal,) = named("goal")
    assert _parent(goal) == server["spanID"]
    assert _tag(goal, "edgehub.goal.id") == goal_id
    (planning,) = named("goal.plan")  # the operator's plan, checked by the planner
    assert _parent(planning) == goal["spanID"]
    (ended,) = named("goal.ended")  # the goal's whole life, written when it ended
    assert _parent(ended) == goal["spanID"]
    assert _tag(ended, "edgehub.goal.status") == "done"
    assert ended["startTime"] <= goal["startTime"] + 1_000_000  # from the submission (Jaeger: µs)
    assert ended["startTime"] + ended["duration"] >= planning["startTime"] + planning["duration"]

    # hub: one task span per dispatch, children of the goal
    tasks = {_tag(s, "edgehub.task.id"): s for s in named("task")}
    assert set(tasks) == {"read-a", "read-b"}
    assert all(_parent(t) == goal["spanID"] for t in tasks.values())

    # edges (NATS headers of StartAgent, kept in the agent's state): each agent run is its task's child
    runs = named("agent.run")
    for tid, state in (("read-a", a), ("read-b", b)):
        (run,) = [r for r in runs if _tag(r, "edgehub.agent.id") == state["agent_id"]]
        assert _parent(run) == tasks[tid]["spanID"]
        assert run["service"] == f"edgehub-edge-{state['device']}"
        assert _tag(run, "edgehub.device.id") == state["device"]
        steps = [s for s in named("agent.step") if _parent(s) == run["spanID"]]
        assert len(steps) == 2, [s["operationName"] for s in steps]  # run_command, then finish
        for step in steps:
            phases = {by_id[k]["operationName"] for k in by_id if _parent(by_id[k]) == step["spanID"]}
            assert {"think", "act", "checkpoint"} <= phases, phases  # model call, tool call, checkpoint
        tools = {_tag(s, "edgehub.tool.name") for s in steps}
        assert tools == {"run_command", "finish"}

    # edges -> hub (NATS headers of the events, kept in the outbox): the hub's span of each applied
    # event is the child of the checkpoint that wrote it
    checkpoints = {s["spanID"] for s in named("checkpoint")}
    applied = named("event.applied")
    assert applied
    assert all(_parent(s) in checkpoints for s in applied)
    assert {s["service"] for s in applied} == {"edgehub-hub"}
    assert {_tag(s, "edgehub.device.id") for s in applied} == set(DEVICES)


def test_an_untraced_caller_still_gets_one_trace_per_goal(fleet: TracedFleet, jaeger: Jaeger) -> None:  # noqa: F811
    """No ``TRACEPARENT``, or a malformed one: the goal's trace starts at the hub (the bad value is
    ignored, never echoed) and the edges still join it."""
    plan = fleet.tmp / "one.json"
    plan.write_text(json.dumps({"tasks": FORK["tasks"][:1]}))
    done = fleet.hub.cli(
        "goal", "submit", "read a line", "--plan", str(plan), "--json",
        env={"TRACEPARENT": "00-" + "0" * 32 + "-" + "1" * 16 + "-01"},  # all-zero trace id: invalid
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    goal_id = json.loads(done.stdout)["goal_id"]
    record = assert_eventually(
        lambda: (g := fleet.goal(goal_id))["status"] in ENDED and g, timeout=120, what="the goal to end"
    )
    trace_id = record["trace_parent"].split("-")[1]
    assert trace_id != "0" * 32
    started = time.monotonic()
    spans = assert_eventually(
        lambda: (s := jaeger.trace(trace_id)) and any(x["operationName"] == "agent.run" for x in s) and s,
        timeout=60,
        what="the goal's trace with its agent",
    )
    assert time.monotonic() - started < 60
    (server,) = [s for s in spans if s["operationName"].endswith("/SubmitGoal")]
    assert _parent(server) == ""  # a root: the invalid parent was dropped
    (goal,) = [s for s in spans if s["operationName"] == "goal"]
    (task,) = [s for s in spans if s["operationName"] == "task"]
    (run,) = [s for s in spans if s["operationName"] == "agent.run"]
    assert (_parent(goal), _parent(task), _parent(run)) == (server["spanID"], goal["spanID"], task["spanID"])


def test_an_agent_resumed_after_its_daemon_was_killed_stays_in_its_tasks_trace(
    fleet: TracedFleet,
    jaeger: Jaeger,  # noqa: F811
) -> None:
    """The task's trace context is in the agent's durable state: the daemon started again after a
    SIGKILL (in the middle of the agent's second step) resumes the agent as a child of the same task
    span, and the events it sends from then on join the trace too."""
    plan = fleet.tmp / "slow.json"
    plan.write_text(json.dumps({"tasks": [_task("slow", "slow read of line C")]}))
    done = fleet.hub.cli("goal", "submit", "read slowly", "--plan", str(plan), "--json")
    assert done.returncode == 0, done.stderr
    goal_id = json.loads(done.stdout)["goal_id"]
    trace_id = fleet.goal(goal_id)["trace_parent"].split("-")[1]

    def first_step_done() -> dict[str, Any] | None:
        steps = [s for s in jaeger.trace(trace_id) if s["operationName"] == "agent.step"]
        return next((s for s in steps if _tag(s, "edgehub.agent.step") == 0), None)

    step0 = assert_eventually(first_step_done, timeout=60, what="the slow task's first step in Jaeger")
    state = fleet.goal(goal_id)["tasks"]["slow"]
    victim = state["device"]
    fleet.edges[victim].send_signal(signal.SIGKILL)  # in its second step (sleep 8): no span flushed
    fleet.edges[victim].wait(timeout=10)
    fleet.start(victim)
    record = assert_eventually(
        lambda: (g := fleet.goal(goal_id))["status"] in ENDED and g, timeout=120, what="the goal to end"
    )
    assert record["status"] == "GOAL_STATUS_DONE", record.get("error")
    assert record["tasks"]["slow"]["attempt"] == 1  # resumed, not reassigned

    def resumed() -> list[dict[str, Any]] | None:
        spans = jaeger.trace(trace_id)
        runs = [s for s in spans if s["operationName"] == "agent.run"]
        return spans if any(_tag(r, "edgehub.agent.first_step") == 1 for r in runs) else None

    spans = assert_eventually(resumed, timeout=60, what=lambda: f"the resumed run: {jaeger.trace(trace_id)}")
    (task,) = [s for s in spans if s["operationName"] == "task"]
    (run,) = [s for s in spans if s["operationName"] == "agent.run"]  # the killed run's never ended
    assert _tag(run, "edgehub.agent.id") == state["agent_id"]
    assert _tag(run, "edgehub.agent.first_step") == 1
    assert _parent(run) == task["spanID"]
    assert _parent(step0) != run["spanID"]  # step 0 ran in the killed process's run
    later = [s for s in spans if s["operationName"] == "agent.step" and _parent(s) == run["spanID"]]
    assert sorted(_tag(s, "edgehub.agent.step") for s in later) == [1, 2]
    checkpoints = {s["spanID"] for s in spans if s["operationName"] == "checkpoint"}
    applied = [s for s in spans if s["operationName"] == "event.applied"]
    assert len(applied) >= 3  # steps 0, 1, 2 (and the task's result)
    assert all(_parent(s) in checkpoints for s in applied)
