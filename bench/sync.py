"""bench/sync: edge -> hub replication beside raw nats-py on the same nats-server.

edgehub: the real edge store's outbox (SQLite), ``OutboxPublisher`` and the hub's ``EventApplier`` as
the hub daemon runs it (default batch; per-device CAS record in KV, acks after the record moves; the
daemon's lag histograms observed per event), applying into the hub's real ``AgentRegistry`` (one
fsynced KV put per agent per batch). Raw: ``js.publish_async`` of the same payloads and a pull
consumer that fetches (nats-py ``PullSubscription.fetch``, 512 at a time) and acks them. Replay only:
the applier's own pull loop consuming and acknowledging the same queue with no apply (the ceiling
for the edgehub replay on this machine).

- latency: one event at a time, from the outbox commit to the event's record written in the agent
  registry (edgehub; the publisher is woken by the commit) vs from publish to fetch (raw). Target
  p99 <= 10 ms.
- sustained: N events produced while the hub consumes, events/s end to end. Target >= 20,000/s.
- replay: N events queued while the hub is down, then applied. Target >= 10,000/s.
- loss and duplicates over all runs, and each agent's registry record checked against its last
  event. Target 0, 0 and 0.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import nats
from nats.js.api import AckPolicy, ConsumerConfig
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import QUICK, Check, pct, print_checks, print_table, write_result

from edgehub.edge.agent.loop import new_agent
from edgehub.edge.store import SqliteStore
from edgehub.hub.fleet.agents import AgentRegistry
from edgehub.hub.metrics import EventLag
from edgehub.protocol import subjects
from edgehub.protocol.v1 import agent_pb2, events_pb2
from edgehub.sync import EventApplier, NatsServer, OutboxPublisher, ensure_topology
from edgehub.sync.applier import _Pull

S = agent_pb2
N = 10_000 if QUICK else 100_000
LATENCY_SAMPLES = 200 if QUICK else 1_000
DEVICE = "bench-dev"
AGENTS = 20


def event(seq: int) -> events_pb2.EdgeEvent:
    agent = f"agent-{seq % AGENTS}"
    step = S.StepEvent(schema_version=1, event_id=f"{agent}/0/{seq}/action", agent_id=agent, device_id=DEVICE)
    step.step, step.thought = seq, "Read leaf.txt to see what it says."
    step.action.CopyFrom(S.ToolCall(tool="read_file", args_json='{"path": "leaf.txt"}'))
    step.observation.output = "green"
    return events_pb2.EdgeEvent(
        schema_version=1, event_id=step.event_id, device_id=DEVICE, agent_id=agent, step=step
    )


class BulkOutbox(SqliteStore):
    """The real store, plus a bulk writer for setting up large queues quickly (one transaction)."""

    def enqueue(self, count: int) -> None:
        with self._tx():
            start = int(self._scalar("SELECT COALESCE(MAX(seq), 0) FROM outbox"))
            for seq in range(start + 1, start + count + 1):
                ev = event(seq)
                self._append_outbox(ev.step)


class Tracked:
    """The hub's agent registry, noting what reached it once its write returned (loss, duplicates,
    latency)."""

    def __init__(self, registry: AgentRegistry) -> None:
        self.registry = registry
        self.seen: dict[str, int] = {}
        self.at: dict[int, float] = {}
        self.last: dict[str, events_pb2.EdgeEvent] = {}

    async def apply(self, ev: events_pb2.EdgeEvent) -> None:
        await self.apply_batch([ev])

    async def apply_batch(self, events: list[events_pb2.EdgeEvent]) -> None:
        await self.registry.apply_batch(events)
        now = time.perf_counter()
        for ev in events:
            self.seen[ev.event_id] = self.seen.get(ev.event_id, 0) + 1
            self.at[ev.seq] = now
            self.last[ev.agent_id] = ev

    async def records_wrong(self) -> int:
        """Agents whose registry record is not the one their last event wrote."""
        wrong = 0
        for agent, ev in self.last.items():
            record = await self.registry.get(agent)
            if record is None or (record["device_seq"], record["last_event"]) != (ev.seq, ev.event_id):
                wrong += 1
        return wrong


async def _until(cond: Callable[[], bool], within: float = 600) -> None:
    deadline = time.perf_counter() + within
    while not cond():
        if time.perf_counter() > deadline:
            raise TimeoutError("benchmark did not complete")
        await asyncio.sleep(0.001)


async def edgehub_side(server: NatsServer, tmp: Path) -> dict[str, float]:
    store = BulkOutbox.open(tmp / "edge.db", device_id=DEVICE)
    for a in range(AGENTS):
        store.create_agent(new_agent(f"agent-{a}", "g"))
    edge, hub = await nats.connect(server.url), await nats.connect(server.url)
    await ensure_topology(hub.jetstream())
    rec = Tracked(AgentRegistry(hub.jetstream()))
    publisher = OutboxPublisher(store, edge.jetstream(), batch=512, idle_poll_s=0.05)
    lag = EventLag(CollectorRegistry())  # the hub's per-event lag histograms
    applier = EventApplier(hub.jetstream(), rec.apply, apply_batch=rec.apply_batch, observe=lag.observe)
    out: dict[str, float] = {"batch": applier.batch}

    # replay: queued while the hub is down
    store.enqueue(N)
    stop_pub = asyncio.Event()
    pub_task = asyncio.create_task(publisher.run(stop_pub))
    await _until(lambda: store.outbox_depth() == 0)
    stop_hub = asyncio.Event()
    t = time.perf_counter()
    hub_task = asyncio.create_task(applier.run(stop_hub))
    await _until(lambda: len(rec.seen) >= N)
    out["replay"] = N / (time.perf_counter() - t)

    # sustained: produced while the hub consumes
    t = time.perf_counter()
    store.enqueue(N)
    publisher.wake.set()
    await _until(lambda: len(rec.seen) >= 2 * N)
    out["sustained"] = N / (time.perf_counter() - t)

    # latency: one event at a time
    lat = []
    for _ in range(LATENCY_SAMPLES):
        before = len(rec.seen)
        store.enqueue(1)
        t = time.perf_counter()
        publisher.wake.set()
        await _until(lambda b=before: len(rec.seen) > b, 10)
        lat.append((rec.at[max(rec.at)] - t) * 1000)
        await asyncio.sleep(0.002)
    out["p50"], out["p99"] = pct(lat, 50), pct(lat, 99)
    total = 2 * N + LATENCY_SAMPLES
    out["lost"] = total - len(rec.seen)
    out["dups"] = sum(c - 1 for c in rec.seen.values())
    stop_pub.set()
    stop_hub.set()
    await asyncio.gather(pub_task, hub_task)
    out["records_wrong"] = await rec.records_wrong()
    out["agents"] = len(rec.last)

    # the pull loop alone: the same queue again, consumed and acknowledged with no apply
    pull = _Pull(hub.jetstream(), "bench-pull-only", applier.batch)
    await pull.open(
        ConsumerConfig(
            name="bench-pull-only",
            durable_name="bench-pull-only",
            filter_subject=subjects.ALL_EVENTS,
            ack_policy=AckPolicy.EXPLICIT,
            max_ack_pending=20_000,
        )
    )
    got, t = 0, time.perf_counter()
    while got < N:
        for msg in await pull.take():
            await msg.ack()
            got += 1
    out["replay_pull_only"] = N / (time.perf_counter() - t)
    await pull.close()

    await edge.close()
    await hub.close()
    store.close()
    return out


async def raw_side(server: NatsServer) -> dict[str, float]:
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    await js.add_stream(name="RAW", subjects=["raw.>"])
    payload = event(1).SerializeToString()
    out: dict[str, float] = {}

    async def publish(n: int) -> None:
        futures = [await js.publish_async("raw.ev", payload) for _ in range(n)]
        await asyncio.gather(*futures)

    await publish(N)  # replay: queued before the consumer starts
    sub = await js.pull_subscribe("raw.>", durable="raw", stream="RAW")

    async def consume(n: int) -> None:
        got = 0
        while got < n:
            try:
                msgs = await sub.fetch(512, timeout=1)
            except nats.errors.TimeoutError:
                continue
            for m in msgs:
                await m.ack()
            got += len(msgs)

    t = time.perf_counter()
    await consume(N)
    out["replay"] = N / (time.perf_counter() - t)
    t = time.perf_counter()
    await asyncio.gather(publish(N), consume(N))
    out["sustained"] = N / (time.perf_counter() - t)
    lat = []
    for _ in range(LATENCY_SAMPLES):
        t = time.perf_counter()
        await js.publish("raw.ev", payload)
        msgs = await sub.fetch(1, timeout=5)
        await msgs[0].ack()
        lat.append((time.perf_counter() - t) * 1000)
    out["p50"], out["p99"] = pct(lat, 50), pct(lat, 99)
    await nc.close()
    return out


async def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        server = await NatsServer.start(tmp / "nats")
        try:
            ours = await edgehub_side(server, tmp)
            raw = await raw_side(server)
        finally:
            await server.stop()
    print_table(
        f"edge -> hub over one nats-server (sync_interval: always), {N:,} events per run, "
        f"applier batch {ours['batch']:.0f}",
        ["figure", "edgehub", "raw nats-py"],
        [
            ["latency p50 ms", f"{ours['p50']:.2f}", f"{raw['p50']:.2f}"],
            ["latency p99 ms", f"{ours['p99']:.2f}", f"{raw['p99']:.2f}"],
            ["sustained events/s", f"{ours['sustained']:,.0f}", f"{raw['sustained']:,.0f}"],
            ["replay events/s", f"{ours['replay']:,.0f}", f"{raw['replay']:,.0f}"],
            ["replay events/s, pull loop alone (ack, no apply)", f"{ours['replay_pull_only']:,.0f}", "-"],
            ["lost / duplicated", f"{ours['lost']:.0f} / {ours['dups']:.0f}", "-"],
            [
                "agent registry records as their last event wrote them",
                f"{ours['agents'] - ours['records_wrong']:.0f} / {ours['agents']:.0f}",
                "-",
            ],
        ],
    )
    checks = [
        Check("latency_p99_ms", round(ours["p99"], 2), "ms", "<= 10", ours["p99"] <= 10),
        Check(
            "sustained_events_per_s",
            round(ours["sustained"]),
            "events/s",
            ">= 20000",
            ours["sustained"] >= 20_000,
        ),
        Check("replay_events_per_s", round(ours["replay"]), "events/s", ">= 10000", ours["replay"] >= 10_000),
        Check("events_lost", ours["lost"], "events", "== 0", ours["lost"] == 0),
        Check("events_duplicated", ours["dups"], "events", "== 0", ours["dups"] == 0),
        Check("registry_records_wrong", ours["records_wrong"], "agents", "== 0", ours["records_wrong"] == 0),
    ]
    print_checks(checks)
    print(f"wrote {write_result('sync', checks)}")


if __name__ == "__main__":
    asyncio.run(main())
