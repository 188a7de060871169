"""bench/dispatch: plans/s and task dispatch latency on one hub process with 1,000 simulated devices
(issue 7).

The hub and the fleet are bench/fleet's: the real ``edgehub hub run`` (embedded nats-server, TLS gRPC
API) and 1,000 simulated devices in WORKERS processes, each with its own device credentials, a twin put
every 5 s and a real ``CommandConsumer``. Here the twins also carry what placement reads, in three
device classes (by index): sensor gateways (half; the built-in tools plus ``read_sensor``, 3 agent
slots), cameras (``camera``, 3 slots) and compute nodes (``gpu_infer``, 4 slots, 8 CPUs), with a site
label and a load that differ per device; each twin also lists one agent running (the one StopAgent
targets). A device's handler records every StartAgent (task id, agent id, when), "runs" the agent for
TASK_S, listing it in its twin meanwhile, then publishes the ``TaskResult`` event as an edge does
(``EdgeEvent`` with the device's gap-free ``seq``, ``Nats-Msg-Id`` ``<device>/<seq>``, on
``subjects.events(device, agent)``). Step events are not simulated (their cost is bench/sync's).

Goals go through the API (``SubmitGoal``, admin token, TLS) with an operator's plan (``plan``, so
no model is called): ``read-a`` (needs ``read_sensor``) and ``read-b`` (``camera``) in parallel, then
``join`` (``gpu_infer``) on both results. The hub validates the plan against the twins, stores the goal
(KV, compare-and-set), places the two forks, publishes their StartAgents and returns; each result
advances the goal, and the second dispatches the join.

Two phases, 1,000 devices heartbeating throughout:

1. throughput: CLIENTS concurrent gRPC clients submit goals back to back for THROUGHPUT_S. plans/s =
   goals accepted (status running) in the phase whose two forks reached their devices, per second.
   Target >= PLANS_TARGET: enough to keep every default agent slot of the fleet (``max_concurrent`` 2)
   busy with one-minute tasks (1,000 x 2 / 60 s / 3 tasks = 11 plans/s; 2.2 in QUICK).
2. steady (once every goal of phase 1 has ended: a burst faster than the fleet's agent slots leaves
   tasks waiting for a free slot, which is queueing, not dispatch): PLAN_RATE goals/s (half the
   target, open loop) and, as the peer, PEER_RATE plain commands/s (``StopAgent`` through the API to
   a named device, as bench/fleet: the hub checks the token, builds the command, publishes it to the
   device's stream; the same delivery path a StartAgent takes, without the planning), as many
   commands as the goals' tasks, for WINDOW_S after WARMUP_S; the load goes on for TAIL_S after the
   window so the window's joins meet the same load. Figures (CLOCK_MONOTONIC or wall
   clock across processes of one machine):

   - plan -> fork StartAgent at the device, p50/p99: from the ``SubmitGoal`` call to the device's handler
     (the ack follows); beside it, from the revision's ``at`` (the hub adopted the plan) to the handler;
     and the peer, API call -> handler. Target p99 <= 1 s (an operator's plan starts within a second,
     the same bound as the heartbeat lag of bench/fleet) and <= 2x the peer's p99 in the same run
     (planning, validation, placement and two KV writes may at most double the command path they
     ride on; a ratio because the machine is shared and absolute times swing 2x between runs).
   - result published -> join StartAgent at the device, p50/p99: from the later of the two fork results
     leaving its device to the join's handler. Same targets (p99 <= 1 s, <= 2x the peer's p99).
   - hub CPU (utime + stime from ``/proc``) over the window, target < 100 % of one core (DESIGN:
     one hub keeps 1,000 devices heartbeating and dispatching on 2 cores, beside its nats-server).

Over the whole run: tasks lost (a task of an accepted goal never received by a device, 40 s after the
load stopped, beyond the commands' 30 s redelivery) and duplicated (received more than once: a
redelivery or a second agent for it), both == 0; devices online (the hub's gauge, sampled every 2 s
in both phases) == the fleet, throughout. Planning by the hub's own model is not dispatch: with
MODEL_PLAN=1 two goals without a plan are submitted at the end, and the time ``SubmitGoal`` takes is
reported without a target (the first includes loading the model; each is cut at 120 s).
PROFILE_HUB=FILE runs the hub under cProfile and writes its stats there; KEEP_LOGS=DIR keeps the hub's
and nats-server's logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event as ProcessEvent
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import QUICK, Check, pct, print_checks, print_table, write_result
from fleet import (
    N_DEVICES,
    WARMUP_S,
    WORKERS,
    Commands,
    Device,
    DeviceLog,
    Hub,
    Samples,
    child_pid,
    cpu_s,
    histogram_quantile,
    machine_busy_s,
    send_commands,
    simulate,
    wait_online,
    window_buckets,
    with_hub,
)

from edgehub.hub.goals.placement import BUILTIN_TOOLS, DEFAULT_MAX_CONCURRENT
from edgehub.hub.goals.record import goal_word
from edgehub.protocol import subjects
from edgehub.protocol.v1 import agent_pb2, commands_pb2, events_pb2, goals_pb2, hub_pb2_grpc, task_pb2
from edgehub.sync.publisher import msg_id

G = goals_pb2
TASK_MINUTE_S = 60.0
TASKS = ("read-a", "read-b", "join")
FORKS = ("read-a", "read-b")
PLANS_TARGET = N_DEVICES * DEFAULT_MAX_CONCURRENT / TASK_MINUTE_S / len(TASKS)
"""plans/s that keep every default slot busy with one-minute tasks (see the docstring)."""
PLAN_RATE = PLANS_TARGET / 2
PEER_RATE = PLAN_RATE * len(TASKS)
CLIENTS = 4
THROUGHPUT_S = 10.0 if QUICK else 20.0
WINDOW_S = 15.0 if QUICK else 30.0
TASK_S = 5.0
"""How long a simulated agent runs before its result is published."""
TAIL_S = 2 * TASK_S + 5.0
GRACE_S = 40.0
DRAIN_S = 180.0
"""At most this long for the throughput phase's goals to end before the steady phase starts."""
LATENCY_TARGET_S = 1.0
PEER_FACTOR = 2.0
MODEL_PLAN = os.environ.get("MODEL_PLAN", "") not in ("", "0")
PLAN = json_format.ParseDict(
    {
        "tasks": [
            {"id": "read-a", "goal": "Read the line's temperature sensors and report their mean.",
             "needs": [], "tools": ["read_sensor"], "estimate_tokens": 2000},
            {"id": "read-b", "goal": "Count the parts on the line's last camera frames.",
             "needs": [], "tools": ["camera"], "estimate_tokens": 2000},
            {"id": "join", "goal": "Say whether the part count fits the temperature.",
             "needs": ["read-a", "read-b"], "tools": ["gpu_infer"], "estimate_tokens": 1500},
        ]
    },
    G.PlanDraft(),
)  # fmt: skip


# ---- the simulated devices (worker processes) ----


def device_class(i: int) -> tuple[list[str], int, int]:
    """(extra tools, max_concurrent, cpus) of device ``i``: 50 % sensors, 30 % cameras, 20 % compute."""
    k = i % 10
    if k < 5:
        return ["read_sensor"], 3, 4
    if k < 8:
        return ["camera"], 3, 4
    return ["gpu_infer"], 4, 8


@dataclass
class DispatchLog(DeviceLog):
    starts: dict[str, list[tuple[str, float, float]]] = field(default_factory=dict)
    """task id -> (agent id, time.monotonic(), time.time()) per StartAgent the handler received."""
    results: dict[str, float] = field(default_factory=dict)
    """task id -> time.monotonic() when its result was published (first attempt)."""
    result_failures: int = 0
    task_stops: int = 0
    """StopAgent of a task agent (the hub reassigned its task or ended its goal)."""


class DispatchDevice(Device):
    log: DispatchLog

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.index = int(self.id.rsplit("-", 1)[1])
        self.extra, self.slots, self.cpus = device_class(self.index)
        self.running: dict[str, str] = {}  # agent id -> task id
        self.seq = 0
        self.publishing = asyncio.Lock()
        self.agents: set[asyncio.Task[None]] = set()

    def state(self) -> dict[str, Any]:
        twin = super().state()
        twin["hardware"]["cpus"] = self.cpus
        twin["load"] = round(self.cpus * (self.index % 7) / 10, 2)
        twin["agents_running"] += list(self.running)
        twin["max_concurrent"] = self.slots
        twin["tools"] = sorted(BUILTIN_TOOLS | set(self.extra))
        twin["labels"] = {"site": f"site-{self.index % 10}"}
        return twin

    async def on_command(self, cmd: commands_pb2.Command) -> None:
        kind = cmd.WhichOneof("body")
        if kind == "stop_agent" and cmd.stop_agent.agent_id != f"{self.id}-agent":
            self.log.task_stops += 1
            return None
        if kind != "start_agent":
            return await super().on_command(cmd)
        start = cmd.start_agent
        seen = self.log.starts.setdefault(start.task_id, [])
        seen.append((start.agent_id, time.monotonic(), time.time()))
        if len(seen) == 1:  # a redelivery or a second agent is counted, not run
            task = asyncio.create_task(self.run_agent(start.agent_id, start.task_id))
            self.agents.add(task)
            task.add_done_callback(self.agents.discard)

    async def run_agent(self, agent_id: str, task_id: str) -> None:
        self.running[agent_id] = task_id
        await asyncio.sleep(TASK_S)
        del self.running[agent_id]
        result = task_pb2.TaskResult(
            schema_version=1,
            task_id=task_id,
            agent_id=agent_id,
            status=agent_pb2.AGENT_STATUS_FINISHED,
            answer=f"{task_id}: 42",
            usage=agent_pb2.Usage(evaluated_tokens=300, completion_tokens=60, steps=2, tool_calls=1),
        )
        result.finished_at.GetCurrentTime()
        async with self.publishing:  # one seq at a time, in order, as the outbox publishes
            self.seq += 1
            event = events_pb2.EdgeEvent(
                schema_version=1,
                event_id=f"task/{agent_id}/end",
                device_id=self.id,
                seq=self.seq,
                agent_id=agent_id,
                task_result=result,
            )
            self.log.results.setdefault(task_id, time.monotonic())
            for _ in range(5):  # an edge's outbox would keep trying; the same Nats-Msg-Id dedupes
                try:
                    await self.nc.jetstream().publish(
                        subjects.events(self.id, agent_id),
                        event.SerializeToString(),
                        headers={"Nats-Msg-Id": msg_id(self.id, self.seq)},
                        stream=subjects.EVENTS_STREAM,
                        timeout=10,
                    )
                    break
                except Exception:
                    self.log.result_failures += 1


def worker_main(worker: int, url: str, trust_dir: Path, done: ProcessEvent, out: Any) -> None:
    out.send(asyncio.run(simulate(worker, url, trust_dir, done, DispatchDevice, DispatchLog())))


# ---- goals through the API ----


@dataclass
class Goal:
    phase: str
    called: float
    """time.monotonic() of the SubmitGoal call."""
    returned: float
    status: str
    planned_at: float
    """The revision's ``at`` (hub wall clock) when the hub adopted the plan."""
    error: str


@dataclass
class Goals:
    by_id: dict[str, Goal] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    """API errors (the call failed)."""
    phase: str = ""

    async def submit(self, stub: hub_pb2_grpc.HubServiceStub, n: int) -> None:
        phase, called = self.phase, time.monotonic()
        req = G.SubmitGoalRequest(text=f"bench goal {n}: line {n % 50}, parts against temperature", plan=PLAN)
        try:
            reply = await stub.SubmitGoal(req, timeout=60)
        except grpc.RpcError as exc:
            self.errors.append(f"{exc.code().name}: {exc.details()}"[:200])
            return
        returned = time.monotonic()
        at = reply.revisions[-1].at if reply.revisions else math.nan
        status = goal_word(reply.status)
        self.by_id[reply.goal_id] = Goal(phase, called, returned, status, at, reply.error[:200])


async def open_loop(goals: Goals, stub: hub_pb2_grpc.HubServiceStub, rate: float) -> None:
    """A goal every 1/rate s, not waiting for the last one, until cancelled."""
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()
    next_at, n = loop.time(), 0
    try:
        while True:
            task = asyncio.create_task(goals.submit(stub, n))
            pending.add(task)
            task.add_done_callback(pending.discard)
            n += 1
            next_at += 1 / rate
            await asyncio.sleep(max(0.0, next_at - loop.time()))
    finally:
        await asyncio.gather(*pending, return_exceptions=True)


async def closed_loop(goals: Goals, stub: hub_pb2_grpc.HubServiceStub, until: float, first: int) -> None:
    """CLIENTS clients, each submitting its next goal when the last returned, until ``until``."""

    async def client(c: int) -> None:
        n = first + c
        while time.monotonic() < until:
            await goals.submit(stub, n)
            n += CLIENTS

    await asyncio.gather(*(client(c) for c in range(CLIENTS)))


# ---- the hub's side: CPU and metrics over a window ----


@dataclass
class Window:
    t0: float
    t1: float
    cpu: dict[str, float]
    """Process (hub, nats, worker<i>, other: everything else on the machine) -> % of one core."""
    online_min: float
    lag_p99: float
    """Heartbeat lag p99 (the hub's histogram), seconds."""


async def observe(hub: Hub, pids: dict[str, int], seconds: float) -> Window:
    """Hub, nats-server and device-worker CPU, the online gauge's minimum and the heartbeat lag."""
    before = await asyncio.to_thread(hub.scrape)
    cpu0, busy0, t0 = {k: cpu_s(p) for k, p in pids.items()}, machine_busy_s(), time.monotonic()
    online = [before["edgehub_hub_devices_online"][()]]
    while time.monotonic() - t0 < seconds:
        await asyncio.sleep(min(2.0, max(0.0, seconds - (time.monotonic() - t0))))
        after: Samples = await asyncio.to_thread(hub.scrape)
        online.append(after["edgehub_hub_devices_online"][()])
    cpu1, busy1, t1 = {k: cpu_s(p) for k, p in pids.items()}, machine_busy_s(), time.monotonic()
    lag = window_buckets("edgehub_hub_heartbeat_lag_seconds", before, after)
    cpu = {k: 100 * (cpu1[k] - cpu0[k]) / (t1 - t0) for k in pids}
    cpu["other"] = 100 * (busy1 - busy0) / (t1 - t0) - sum(cpu.values())
    return Window(t0, t1, cpu, min(online), histogram_quantile(lag, 0.99))


async def goals_settle(hub: Hub, within: float) -> float:
    """Waits until the hub has no goal running (or ``within`` passed); returns the goals still active."""
    deadline = time.monotonic() + within
    while True:
        active = (await asyncio.to_thread(hub.scrape)).get("edgehub_hub_goals_active", {}).get((), 0.0)
        if active == 0 or time.monotonic() > deadline:
            return active
        await asyncio.sleep(1.0)


async def model_plans(stub: hub_pb2_grpc.HubServiceStub) -> list[tuple[float, str]]:
    """Two goals planned by the hub's own model: (seconds SubmitGoal took, status or error)."""
    out = []
    for n in range(2):
        text = f"Read the temperature sensors and the camera part count of line {n + 1}, then compare them."
        t = time.monotonic()
        try:
            reply = await stub.SubmitGoal(G.SubmitGoalRequest(text=text), timeout=120)
            word = goal_word(reply.status)
            status = word if word == "running" else f"{word}: {reply.error[:80]}"
        except grpc.RpcError as exc:
            status = f"{exc.code().name}: {exc.details()}"[:120]
        out.append((time.monotonic() - t, status))
    return out


# ---- the run ----


async def drive(hub: Hub, workers: Sequence[multiprocessing.process.BaseProcess]) -> dict[str, Any]:
    pids = {"hub": hub.proc.pid, "nats": child_pid(hub.proc.pid, "nats-server")}
    pids |= {f"worker{i}": int(w.pid or 0) for i, w in enumerate(workers)}
    goals, peer, out = Goals(), Commands(), dict[str, Any]()
    started = time.monotonic()
    online = await wait_online(hub, N_DEVICES, 180)
    assert online >= N_DEVICES, f"only {online} devices online after 180 s"
    out["online_after_s"] = time.monotonic() - started
    async with grpc.aio.secure_channel(hub.api, hub.api_credentials()) as channel:
        stub = hub_pb2_grpc.HubServiceStub(channel)
        await goals.submit(stub, -1)  # the first goal opens the goals bucket: not timed
        goals.by_id.clear()
        goals.phase = "throughput"
        out["throughput_start"] = time.monotonic()
        loop_done = out["throughput_start"] + THROUGHPUT_S
        closed = asyncio.create_task(closed_loop(goals, stub, loop_done, 1_000_000))
        out["throughput"] = await observe(hub, pids, THROUGHPUT_S)
        await closed
        out["throughput_end"] = time.monotonic()
        # the burst can exceed the fleet's agent slots (tasks then wait for a free one): let it drain,
        # so the steady phase times dispatch, not a queue behind the burst
        out["burst_left"] = await goals_settle(hub, DRAIN_S)
        out["drained_s"] = time.monotonic() - out["throughput_end"]
        goals.phase = "warmup"
        steady = asyncio.create_task(open_loop(goals, stub, PLAN_RATE))
        commands = asyncio.create_task(send_commands(stub, peer, PEER_RATE))
        await asyncio.sleep(WARMUP_S + TASK_S)  # and the throughput phase's last joins
        goals.phase = "steady"
        peer.window = (time.monotonic(), math.inf)
        out["steady"] = await observe(hub, pids, WINDOW_S)
        peer.window = (out["steady"].t0, out["steady"].t1)
        goals.phase = "tail"
        await asyncio.sleep(TAIL_S)
        for task in (steady, commands):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        out["active_after_grace"] = await goals_settle(hub, GRACE_S)
        await asyncio.sleep(max(0.0, GRACE_S - TAIL_S))  # commands in flight or waiting for redelivery
        listed = await stub.ListGoals(G.ListGoalsRequest(), timeout=60)
        out["statuses"] = {g.goal_id: goal_word(g.status) for g in listed.goals}
        out["model"] = await model_plans(stub) if MODEL_PLAN else []
    out["goals"], out["peer"] = goals, peer
    return out


async def run(hub: Hub) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    done = ctx.Event()
    pipes, workers = [], []
    for w in range(WORKERS):
        ours, theirs = ctx.Pipe(duplex=False)
        workers.append(
            ctx.Process(target=worker_main, args=(w, hub.nats, hub.trust, done, theirs), daemon=True)
        )
        pipes.append(ours)
        workers[-1].start()
    try:
        out = await drive(hub, workers)
    finally:
        done.set()
    logs: list[DispatchLog] = [await asyncio.to_thread(p.recv) for p in pipes]
    for process in workers:
        process.join(30)
    out["logs"] = logs
    return out


# ---- figures ----


def ms(values: list[float], q: float) -> float:
    return pct(values, q) * 1000 if values else math.nan


def figures(r: dict[str, Any]) -> dict[str, float]:
    goals: Goals = r["goals"]
    logs: list[DispatchLog] = r["logs"]
    starts: dict[str, list[tuple[str, float, float]]] = {}
    results: dict[str, float] = {}
    for log in logs:
        for tid, seen in log.starts.items():
            starts.setdefault(tid, []).extend(seen)
        results |= log.results
    accepted = {gid: g for gid, g in goals.by_id.items() if g.status == "running"}
    planned = [f"{gid}/{t}" for gid in accepted for t in TASKS]
    first = {tid: min((m, w) for _, m, w in seen) for tid, seen in starts.items()}
    fork_call, fork_at, join = [], [], []
    steady = {gid: g for gid, g in accepted.items() if g.phase == "steady"}
    for gid, g in steady.items():
        for t in FORKS:
            if f"{gid}/{t}" in first:
                mono, wall = first[f"{gid}/{t}"]
                fork_call.append(mono - g.called)
                fork_at.append(wall - g.planned_at)
        ends = [results.get(f"{gid}/{t}") for t in FORKS]
        if f"{gid}/join" in first and all(e is not None for e in ends):
            join.append(first[f"{gid}/join"][0] - max(e for e in ends if e is not None))
    burst = [
        g for gid, g in accepted.items()
        if g.phase == "throughput" and all(f"{gid}/{t}" in first for t in FORKS)
    ]  # fmt: skip
    handled = {c: t for log in logs for c, t in log.handled.items()}
    peer: Commands = r["peer"]
    cmd = [handled[c] - t for c, t in peer.issued.items() if c in handled]
    statuses: dict[str, str] = r["statuses"]
    return {
        "accepted": len(accepted),
        "submitted": len(goals.by_id) + len(goals.errors),
        "refused": len(goals.by_id) - len(accepted),
        "api_errors": len(goals.errors),
        "plans_s": len(burst) / (r["throughput_end"] - r["throughput_start"]),
        "burst_submit_p50": ms([g.returned - g.called for g in burst], 50),
        "burst_submit_p99": ms([g.returned - g.called for g in burst], 99),
        "steady_goals": len(steady),
        "fork_p50": ms(fork_call, 50),
        "fork_p99": ms(fork_call, 99),
        "fork_at_p50": ms(fork_at, 50),
        "fork_at_p99": ms(fork_at, 99),
        "submit_p50": ms([g.returned - g.called for g in steady.values()], 50),
        "submit_p99": ms([g.returned - g.called for g in steady.values()], 99),
        "join_n": len(join),
        "join_p50": ms(join, 50),
        "join_p99": ms(join, 99),
        "cmd_n": len(peer.issued),
        "cmd_p50": ms(cmd, 50),
        "cmd_p99": ms(cmd, 99),
        "cmd_lost": len(peer.issued.keys() - handled.keys()),
        "cmd_api_errors": peer.api_errors,
        "task_stops": sum(log.task_stops for log in logs),
        "planned": len(planned),
        "lost": sum(t not in starts for t in planned),
        "duplicated": sum(len(starts.get(t, ())) > 1 for t in planned),
        "redelivered": sum(len(starts.get(t, ())) - len({a for a, *_ in starts.get(t, ())}) for t in planned),
        "done": sum(statuses.get(gid) == "done" for gid in accepted),
        "result_failures": sum(log.result_failures for log in logs),
        "resubscribes": sum(len(log.resubscribes) for log in logs),
        "beat_failures": sum(log.put_failures for log in logs),
    }


def report(r: dict[str, Any], f: dict[str, float], hub_exit: int) -> list[Check]:
    tp, st = r["throughput"], r["steady"]

    def cpu(w: Window) -> str:
        workers = sum(v for k, v in w.cpu.items() if k.startswith("worker"))
        return f"{w.cpu['hub']:.0f} / {w.cpu['nats']:.0f} / {workers:.0f} / {w.cpu['other']:.0f}"

    rows = [
        ["plans/s accepted, forks at their devices (throughput phase)", f"{f['plans_s']:.1f}"],
        [f"  SubmitGoal call p50 / p99 ms, {CLIENTS} clients back to back",
         f"{f['burst_submit_p50']:.0f} / {f['burst_submit_p99']:.0f}"],
        [f"  CPU % hub / nats-server / devices / else ({os.cpu_count()} cores)", cpu(tp)],
        ["  the burst's goals all ended after s (goals still active)",
         f"{r['drained_s']:.0f} ({r['burst_left']:.0f})"],
        [f"steady: {PLAN_RATE:.2g} goals/s + {PEER_RATE:.2g} StopAgent/s, goals timed",
         f"{f['steady_goals']:.0f}"],
        ["  SubmitGoal call -> fork StartAgent at device p50 / p99 ms",
         f"{f['fork_p50']:.0f} / {f['fork_p99']:.0f}"],
        ["  plan adopted (revision at) -> fork StartAgent p50 / p99 ms",
         f"{f['fork_at_p50']:.0f} / {f['fork_at_p99']:.0f}"],
        ["  SubmitGoal call -> reply p50 / p99 ms", f"{f['submit_p50']:.0f} / {f['submit_p99']:.0f}"],
        ["  last fork result published -> join StartAgent p50 / p99 ms",
         f"{f['join_p50']:.0f} / {f['join_p99']:.0f} ({f['join_n']:.0f})"],
        ["  peer: StopAgent API call -> device handler p50 / p99 ms",
         f"{f['cmd_p50']:.0f} / {f['cmd_p99']:.0f} ({f['cmd_n']:.0f}, {f['cmd_lost']:.0f} lost)"],
        [f"  CPU % hub / nats-server / devices / else ({os.cpu_count()} cores)", cpu(st)],
        ["  heartbeat lag p99 ms (hub histogram)", f"{st.lag_p99 * 1000:.0f}"],
        ["goals submitted / accepted / refused / API errors / done", (
            f"{f['submitted']:.0f} / {f['accepted']:.0f} / {f['refused']:.0f} / {f['api_errors']:.0f} / "
            f"{f['done']:.0f}")],
        ["tasks planned / lost / duplicated (redelivered)",
         f"{f['planned']:.0f} / {f['lost']:.0f} / {f['duplicated']:.0f} ({f['redelivered']:.0f})"],
        ["devices online min: throughput / steady", f"{tp.online_min:.0f} / {st.online_min:.0f}"],
        ["goals still active after the grace", f"{r['active_after_grace']:.0f}"],
        ["result publishes failed / beats failed / re-subscribes / StopAgent API errors",
         f"{f['result_failures']:.0f} / {f['beat_failures']:.0f} / {f['resubscribes']:.0f} / "
         f"{f['cmd_api_errors']:.0f}"],
        ["task agents the hub stopped (reassigned or goal ended)", f"{f['task_stops']:.0f}"],
        ["nats-server log: slow consumers / other warnings; hub exit",
         f"{r['slow_consumers']} / {r['server_warnings']}; {hub_exit}"],
    ]  # fmt: skip
    for i, (seconds, status) in enumerate(r["model"]):
        label = "incl. loading the model" if i == 0 else "model loaded"
        rows.append(
            [f"info, not dispatch: the hub's model plans a goal ({label}) s", f"{seconds:.1f} ({status})"]
        )
    print_table(
        f"one hub, {N_DEVICES:,} simulated devices ({WORKERS} processes), 3-task plans (fork + join), "
        f"agents run {TASK_S:g} s",
        ["figure", "value"],
        rows,
    )
    goals: Goals = r["goals"]
    refused = [f"{gid} {g.status}: {g.error}" for gid, g in goals.by_id.items() if g.status != "running"]
    if refused or goals.errors:
        print("refused goals and API errors (first 5 each):", *refused[:5], *goals.errors[:5], sep="\n  ")
    return checks(f, tp, st)


def checks(f: dict[str, float], tp: Window, st: Window) -> list[Check]:
    n, peer99, bound = N_DEVICES, f["cmd_p99"], LATENCY_TARGET_S * 1000
    plans = f["plans_s"]

    def under(name: str, value: float, limit: float, target: str) -> Check:
        return Check(name, round(value, 2), "ms" if "ms" in name else "x", target, value <= limit)

    online = min(tp.online_min, st.online_min)
    return [
        Check("plans_per_s", round(plans, 2), "plans/s", f">= {PLANS_TARGET:.3g}", plans >= PLANS_TARGET),
        under("fork_dispatch_p99_ms", f["fork_p99"], bound, f"<= {bound:g}"),
        under("fork_dispatch_p99_vs_command", f["fork_p99"] / peer99, PEER_FACTOR, f"<= {PEER_FACTOR:g}"),
        under("join_dispatch_p99_ms", f["join_p99"], bound, f"<= {bound:g}"),
        under("join_dispatch_p99_vs_command", f["join_p99"] / peer99, PEER_FACTOR, f"<= {PEER_FACTOR:g}"),
        Check("hub_cpu_percent", round(st.cpu["hub"], 1), "% of one core", "< 100", st.cpu["hub"] < 100),
        Check("tasks_lost", f["lost"], "tasks", "== 0", f["lost"] == 0 and f["planned"] > 0),
        Check("tasks_duplicated", f["duplicated"], "tasks", "== 0", f["duplicated"] == 0),
        Check("devices_online_min", online, "devices", f"== {n}", online == n),
    ]  # fmt: skip


async def main() -> None:
    result, code = await with_hub(run)
    checks = report(result, figures(result), code)
    print_checks(checks)
    print(f"wrote {write_result('dispatch', checks)}")


if __name__ == "__main__":
    asyncio.run(main())
