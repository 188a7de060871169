"""Edge -> hub replication on a real nats-server and the real edge store: every event arrives exactly
once and in per-agent order, through hub downtime, nats-server restarts and concurrent hub consumers;
bad messages go to the dead-letter stream and processing continues."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import apsw
import pytest
from nats.js import JetStreamContext

from edgehub.edge.agent.loop import new_agent
from edgehub.edge.store import SqliteStore
from edgehub.protocol import subjects
from edgehub.protocol.v1 import agent_pb2, commands_pb2, events_pb2
from edgehub.sync import EventApplier, NatsServer, OutboxPublisher
from edgehub.sync.commands import CommandConsumer, new_command, send_command
from edgehub.sync.lease import Lease
from tests.harness.nats import connect, nats_server  # noqa: F401 - fixture
from tests.harness.wait import eventually

S = agent_pb2
DEVICE = "dev.1"  # a dot, to prove ids cannot spill into other subject tokens


def fill_outbox(path: Path, n: int, agents: int = 10) -> SqliteStore:
    """``n`` step events spread over ``agents`` agents, committed in one transaction (test set-up only)."""
    store = SqliteStore.open(path, device_id=DEVICE)
    existing = {a.agent_id for a in store.list_agents()}
    for a in range(agents):
        if f"agent-{a}" not in existing:
            store.create_agent(new_agent(f"agent-{a}", "g"))
    store.close()
    conn = apsw.Connection(str(path))
    conn.execute("BEGIN IMMEDIATE")
    start = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()[0]
    for i in range(n):
        seq = start + i + 1
        agent = f"agent-{seq % agents}"
        step = S.StepEvent(
            schema_version=1, event_id=f"{agent}/0/{seq}/action", agent_id=agent, device_id=DEVICE, step=seq
        )
        env = events_pb2.EdgeEvent(
            schema_version=1, event_id=step.event_id, device_id=DEVICE, seq=seq, agent_id=agent, step=step
        )
        conn.execute(
            "INSERT INTO outbox(seq, event_id, event, created_at) VALUES (?,?,?,?)",
            (seq, step.event_id, env.SerializeToString(), time.time()),
        )
    conn.execute("COMMIT")
    conn.close()
    return SqliteStore.open(path, device_id=DEVICE)


class Hub:
    """What a hub does with an event, for the test: an idempotent record keyed by event id."""

    def __init__(self) -> None:
        self.calls = 0
        self.by_id: dict[str, events_pb2.EdgeEvent] = {}
        self.order: dict[str, list[int]] = defaultdict(list)

    async def apply(self, event: events_pb2.EdgeEvent) -> None:
        self.calls += 1
        if event.event_id not in self.by_id:
            self.by_id[event.event_id] = event
            self.order[event.agent_id].append(event.step.step)

    def assert_exactly_once_in_order(self, n: int) -> None:
        assert len(self.by_id) == n
        assert sorted(e.seq for e in self.by_id.values()) == list(range(1, n + 1))
        for agent, steps in self.order.items():
            assert steps == sorted(steps), f"{agent} applied out of order"


async def publish_all(store: SqliteStore, js: JetStreamContext) -> None:
    """Drain the edge's outbox into the stream (the hub not consuming yet)."""
    async with running(OutboxPublisher(store, js).run):
        await eventually(lambda: not store.outbox_pending(1), within=30)


@contextlib.asynccontextmanager
async def running(*coros: object) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(c(stop)) for c in coros]  # type: ignore[operator]
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)


async def test_10k_events_queued_while_the_hub_is_down_arrive_once_and_in_order(
    tmp_path: Path,
    nats_server: NatsServer,  # noqa: F811
) -> None:
    store = fill_outbox(tmp_path / "edge.db", 10_000)
    edge = await connect(nats_server, "edge")
    publisher = OutboxPublisher(store, edge.jetstream())
    async with running(publisher.run):
        await eventually(lambda: not store.outbox_pending(1), within=120, what="the outbox to drain")
    hub_nc = await connect(nats_server, "hub")
    hub = Hub()
    applier = EventApplier(hub_nc.jetstream(), hub.apply)
    async with running(applier.run):
        await eventually(lambda: len(hub.by_id) == 10_000, within=120, what="every event applied")
    hub.assert_exactly_once_in_order(10_000)
    assert hub.calls == 10_000
    await edge.close()
    await hub_nc.close()


async def test_events_written_while_nats_is_down_replay_after_restart_exactly_once(
    tmp_path: Path,
    nats_server: NatsServer,  # noqa: F811
) -> None:
    store = fill_outbox(tmp_path / "edge.db", 2_000)
    edge, hub_nc = await connect(nats_server, "edge"), await connect(nats_server, "hub")
    hub = Hub()
    publisher = OutboxPublisher(store, edge.jetstream(), ack_timeout_s=1.0)
    applier = EventApplier(hub_nc.jetstream(), hub.apply, ack_wait_s=3.0)
    async with running(publisher.run, applier.run):
        await eventually(lambda: len(hub.by_id) >= 500, within=60)
        await nats_server.kill()  # mid-replay, no clean shutdown
        store.close()
        store = fill_outbox(tmp_path / "edge.db", 3_000)  # the edge keeps working offline
        publisher.outbox = store
        await nats_server.restart()
        await eventually(
            lambda: len(hub.by_id) == 5_000,
            within=120,
            what=lambda: (
                f"replay: {len(hub.by_id)} applied, {applier.stats}, {publisher.stats}, "  # type: ignore[arg-type]
                f"{len(store.outbox_pending(10_000))} pending"
            ),
        )
    hub.assert_exactly_once_in_order(5_000)
    assert not store.outbox_pending(1)
    await edge.close()
    await hub_nc.close()


async def test_two_hubs_apply_every_event_exactly_once_and_fail_over_when_the_active_one_dies(
    tmp_path: Path,
    nats_server: NatsServer,  # noqa: F811
) -> None:
    store = fill_outbox(tmp_path / "edge.db", 5_000)
    edge = await connect(nats_server, "edge")
    hub = Hub()
    a, b = await connect(nats_server, "hub-a"), await connect(nats_server, "hub-b")
    hub_a = EventApplier(a.jetstream(), hub.apply, batch=64, lease=Lease(a.jetstream(), "events", "hub-a"))
    hub_b = EventApplier(b.jetstream(), hub.apply, batch=64, lease=Lease(b.jetstream(), "events", "hub-b"))
    stop_a = asyncio.Event()
    task_a = asyncio.create_task(hub_a.run(stop_a))
    probe = Lease(edge.jetstream(), "events", "observer")
    for _ in range(100):  # hub-a takes the lease first
        if await probe.holder_now() == "hub-a":
            break
        await asyncio.sleep(0.05)
    assert await probe.holder_now() == "hub-a"
    publisher = OutboxPublisher(store, edge.jetstream())
    async with running(publisher.run, hub_b.run):
        await eventually(lambda: len(hub.by_id) >= 1_000, within=60)
        assert hub_b.stats.applied == 0  # standing by while hub-a holds the lease
        await a.close()  # hub-a is cut off: it cannot release its lease, which must expire
        stop_a.set()
        await asyncio.wait_for(task_a, 30)
        await eventually(
            lambda: len(hub.by_id) == 5_000,
            within=120,
            what=lambda: f"{len(hub.by_id)} applied, {hub_a.stats}, {hub_b.stats}, {publisher.stats}",
        )
    hub.assert_exactly_once_in_order(5_000)
    assert hub_b.stats.applied > 0
    assert hub_a.stats.applied + hub_b.stats.applied >= 5_000
    for nc in (edge, b):
        await nc.close()


@pytest.mark.parametrize(
    ("subject", "payload", "reason"),
    [
        (subjects.events(DEVICE, "agent-0"), b"\xff\xfe not protobuf", "malformed"),
        (subjects.events(DEVICE, "agent-0"), b"\x08" + b"\x63", "unknown schema version 99"),
        (subjects.events("other", "agent-0"), None, "subject says other/agent-0"),
    ],
)
async def test_bad_messages_are_dead_lettered_with_a_reason_and_processing_continues(
    tmp_path: Path,
    nats_server: NatsServer,  # noqa: F811
    subject: str,
    payload: bytes | None,
    reason: str,
) -> None:
    store = fill_outbox(tmp_path / "edge.db", 20, agents=1)
    good = store.outbox_pending(1)[0].event
    nc = await connect(nats_server)
    js = nc.jetstream()
    await js.publish(subject, payload if payload is not None else good.SerializeToString())
    hub = Hub()
    applier = EventApplier(js, hub.apply)
    publisher = OutboxPublisher(store, js)
    async with running(applier.run, publisher.run):
        await eventually(lambda: len(hub.by_id) == 20, within=60)
    assert applier.stats.dead_lettered == 1
    dlq = await js.get_last_msg(subjects.DEADLETTER_STREAM, subjects.deadletter("events"))
    assert dlq.headers is not None
    assert reason in dlq.headers["Edgehub-Reason"]
    await nc.close()


async def test_commands_reach_only_their_device_once_bad_ones_are_dead_lettered_and_failures_retry(
    nats_server: NatsServer,  # noqa: F811
) -> None:
    nc = await connect(nats_server)
    js = nc.jetstream()
    seen: list[str] = []
    failed_once: set[str] = set()

    async def handle(cmd: commands_pb2.Command) -> None:
        if cmd.command_id.endswith("flaky") and cmd.command_id not in failed_once:
            failed_once.add(cmd.command_id)
            raise RuntimeError("store busy")
        seen.append(cmd.command_id)

    start = new_command(DEVICE, "test")
    start.command_id += "-flaky"
    start.start_agent.agent_id, start.start_agent.goal = "a1", "g"
    other = new_command("dev-2", "test")
    other.stop_agent.agent_id = "a9"
    await send_command(js, start)
    await send_command(js, start)  # a resend: de-duplicated by its Nats-Msg-Id
    await send_command(js, other)
    await js.publish(subjects.commands(DEVICE), b"\xff garbage")
    consumer = CommandConsumer(js, DEVICE, handle, retry_delay_s=0.2)
    async with running(consumer.run):
        await eventually(lambda: seen == [start.command_id] and consumer.rejected == 1, within=30)
    assert other.command_id not in seen
    dlq = await js.get_last_msg(subjects.DEADLETTER_STREAM, subjects.device_deadletter(DEVICE))
    assert dlq.headers is not None
    assert "malformed" in dlq.headers["Edgehub-Reason"]
    await nc.close()


# The applier's own pull loop (``_Pull``): the cases nats-py's fetch used to handle for it.


async def test_a_deleted_consumer_is_recreated_and_every_event_is_still_applied_once(
    tmp_path: Path,
    nats_server: NatsServer,  # noqa: F811
) -> None:
    store = fill_outbox(tmp_path / "edge.db", 300, agents=3)
    nc = await connect(nats_server)
    js = nc.jetstream()
    hub = Hub()
    applier = EventApplier(js, hub.apply, batch=50)
    publisher = OutboxPublisher(store, js)
    async with running(applier.run, publisher.run):
        await eventually(lambda: len(hub.by_id) == 300, within=60)
        # an operator (or a stream re-creation) removes the durable consumer under a running hub
        await js.delete_consumer(subjects.EVENTS_STREAM, applier.durable)
        fill_outbox(tmp_path / "edge.db", 200, agents=3).close()
        await eventually(lambda: len(hub.by_id) == 500, within=60, what="events after the consumer came back")
        # the new consumer starts from the stream's beginning: the record, not the server, says applied
        await eventually(lambda: applier.stats.duplicates >= 300, within=30)
    hub.assert_exactly_once_in_order(500)
    assert hub.calls == 500
    await nc.close()


async def test_an_event_carrying_a_status_header_is_applied_not_taken_for_a_server_status(
    tmp_path: Path,
    nats_server: NatsServer,  # noqa: F811
) -> None:
    """Server statuses (408, 409...) come as header-only messages; a device may put any header on its
    event, but its message has an ack subject and a server status has none."""
    store = fill_outbox(tmp_path / "edge.db", 3, agents=1)
    events = [e.event for e in store.outbox_pending(10)]
    nc = await connect(nats_server)
    js = nc.jetstream()
    for event in events:
        headers = {"Status": "404", "Description": "No Messages"} if event.seq == 2 else None
        await js.publish(subjects.events(DEVICE, event.agent_id), event.SerializeToString(), headers=headers)
    hub = Hub()
    applier = EventApplier(js, hub.apply)
    async with running(applier.run):
        await eventually(lambda: len(hub.by_id) == 3, within=30)
    hub.assert_exactly_once_in_order(3)
    assert applier.stats.dead_lettered == 0
    await nc.close()


async def test_a_batch_applied_longer_than_the_ack_wait_is_not_redelivered_meanwhile(
    tmp_path: Path,
    nats_server: NatsServer,  # noqa: F811
) -> None:
    """The applier reports the batch (and what waits behind it) in progress every third of the ack
    wait; without that the server would redeliver the whole batch while it is still being applied."""
    store = fill_outbox(tmp_path / "edge.db", 40, agents=2)
    nc = await connect(nats_server)
    js = nc.jetstream()
    await publish_all(store, js)
    hub = Hub()
    slow_once = asyncio.Event()

    async def slow_apply(event: events_pb2.EdgeEvent) -> None:
        if not slow_once.is_set():
            slow_once.set()
            await asyncio.sleep(3.5)  # more than three ack waits
        await hub.apply(event)

    applier = EventApplier(js, slow_apply, batch=20, ack_wait_s=1.0)
    async with running(applier.run):
        await eventually(lambda: len(hub.by_id) == 40, within=30)
        await asyncio.sleep(1.5)  # a redelivery would come back within one more ack wait
    hub.assert_exactly_once_in_order(40)
    assert hub.calls == 40
    assert applier.stats.duplicates == 0, "the server redelivered events that were being applied"
    await nc.close()


async def test_messages_delivered_but_not_yet_taken_go_back_at_once_when_the_hub_stops(
    tmp_path: Path,
    nats_server: NatsServer,  # noqa: F811
) -> None:
    """A stopping hub negatively acknowledges what it had received but not started on, so another hub
    gets those events now rather than after the ack wait."""
    from edgehub.protocol.ids import kv_key
    from edgehub.sync.applier import _Pull
    from edgehub.sync.streams import APPLIED

    store = fill_outbox(tmp_path / "edge.db", 30, agents=1)
    nc = await connect(nats_server)
    js = nc.jetstream()
    await publish_all(store, js)
    applier = EventApplier(js, Hub().apply, ack_wait_s=30.0)
    pull = _Pull(js, applier.durable, batch=10)
    await pull.open(applier._consumer_config())
    taken = await pull.take()
    assert len(taken) == 10
    await eventually(lambda: len(pull.waiting) == 10, within=10, what="the next batch delivered meanwhile")
    await pull.close()
    # the first 10 are applied, as the applier does it: the record moves, then the acks
    await (await js.key_value(APPLIED.name)).put(kv_key(DEVICE), b"10")
    for msg in taken:
        await msg.ack()

    hub = Hub()
    second = EventApplier(js, hub.apply, ack_wait_s=30.0)
    async with running(second.run):
        # the server counts a nak'd message as pending until it is redelivered: what shows the nak is
        # a second hub getting the 10 waiting ones long before their 30 s ack wait ends
        await eventually(lambda: len(hub.by_id) == 20, within=10, what="the rest, long before the ack wait")
    assert sorted(e.seq for e in hub.by_id.values()) == list(range(11, 31))
    await nc.close()


async def test_a_hub_that_takes_over_knows_each_devices_last_applied_sequence_before_its_next_event(
    tmp_path: Path,
    nats_server: NatsServer,  # noqa: F811
) -> None:
    store = fill_outbox(tmp_path / "edge.db", 200)
    edge, hub_nc = await connect(nats_server, "edge"), await connect(nats_server, "hub")
    hub = Hub()
    first = EventApplier(hub_nc.jetstream(), hub.apply)
    async with running(OutboxPublisher(store, edge.jetstream()).run, first.run):
        await eventually(lambda: len(hub.by_id) == 200, within=60)
    assert first.last_applied == {DEVICE: 200}
    second = EventApplier(hub_nc.jetstream(), hub.apply)  # another process: nothing applied by it yet
    async with running(second.run):
        await eventually(
            lambda: second.last_applied == {DEVICE: 200}, within=10, what=lambda: second.last_applied
        )
    assert second.stats.applied == 0  # known from the bucket, not from an event it applied
    for nc in (edge, hub_nc):
        await nc.close()
