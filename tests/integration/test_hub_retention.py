"""Retention on the hub, on a real nats-server with the real applier, agent registry, migration
service and edge store: applied events are purged after the retention and unapplied ones never are;
a purged trace answers "expired"; ended migrations are pruned with their handover state; existing
streams get new limits in place; a full events stream refuses publishes and the edges' outboxes keep
the events until there is room again, nothing lost."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import DiscardPolicy

from edgehub.hub.app import HubDaemon
from edgehub.hub.config import HubConfig, RetentionConfig
from edgehub.hub.errors import Refused
from edgehub.hub.fleet.agents import AgentRegistry
from edgehub.hub.fleet.migration import MigrationService
from edgehub.hub.fleet.traces import Traces
from edgehub.hub.retention import Retention
from edgehub.protocol import subjects
from edgehub.protocol.errors import ErrorCode
from edgehub.protocol.v1 import events_pb2, hub_pb2
from edgehub.sync import EventApplier, NatsServer, OutboxPublisher, ensure_topology
from edgehub.sync.lease import Lease
from edgehub.sync.records import RecordStore, TextCodec
from edgehub.sync.streams import APPLIED, HANDOVERS, STREAMS, StreamLimits
from tests.harness.nats import connect, nats_server  # noqa: F401 - fixture
from tests.harness.wait import eventually
from tests.integration.test_sync import DEVICE, fill_outbox, running

DAY = 86400.0
H = hub_pb2


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:  # noqa: F811 - the fixture above
    client = await connect(nats_server, "hub")
    yield client
    await client.close()


class Gate:
    """The real agent registry's apply, refusing (the batch fails, unacknowledged) past ``upto``."""

    def __init__(self, agents: AgentRegistry, upto: int) -> None:
        self.agents = agents
        self.upto = upto

    async def apply_batch(self, events: list[events_pb2.EdgeEvent]) -> None:
        if any(e.seq > self.upto for e in events):
            raise RuntimeError(f"the test holds events past seq {self.upto}")
        await self.agents.apply_batch(events)


def retention(nc: Client, agents: AgentRegistry, **cfg: float) -> Retention:
    js = nc.jetstream()
    return Retention(js, RetentionConfig(**cfg), MigrationService(js, agents), holder="test")


class Purger:
    """Retention rounds every 0.1 s as if a day had passed: applied events make room for new ones."""

    def __init__(self, task: Retention) -> None:
        self.task = task
        self.rounds = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if (await self.task.round(now=time.time() + 2 * DAY)).events_purged_below:
                self.rounds += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)


async def applied_seq(nc: Client) -> int:
    found = await RecordStore(nc.jetstream(), APPLIED.name, TextCodec()).get(DEVICE)
    return int(found.value) if found is not None else 0


async def test_only_applied_events_past_the_retention_are_purged_and_unapplied_ones_are_kept(
    tmp_path: Path, nc: Client
) -> None:
    js = nc.jetstream()
    store = fill_outbox(tmp_path / "edge.db", 200, agents=4)
    async with running(OutboxPublisher(store, js).run):
        await eventually(lambda: not store.outbox_pending(1), within=60, what="the outbox to drain")
    agents = AgentRegistry(js)
    gate = Gate(agents, upto=100)
    # one event a batch: a failed batch is redelivered whole, and under load a pull can return a part
    # batch, so a batch of ten could hold both sides of the gate and keep an event under it from applying
    applier = EventApplier(js, agents.apply, apply_batch=gate.apply_batch, batch=1, ack_wait_s=1.0)
    task = retention(nc, agents, events_days=30)
    async with running(applier.run):
        await eventually(lambda: applier.stats.applied == 100, within=60, what="the first 100 applied")
        assert (await task.round()).events_purged_below == 0  # all younger than 30 days

        later = await task.round(now=time.time() + 31 * DAY)  # all of them past the retention now
        info = (await js.stream_info(subjects.EVENTS_STREAM)).state
        assert later.events_purged_below == 101
        assert later.unapplied_kept == 100
        assert (info.first_seq, info.messages) == (101, 100), "an unapplied event was purged"

    gate.upto = 200  # the rest in batches again (one a batch waits out every gap one by one)
    rest = EventApplier(js, agents.apply, apply_batch=gate.apply_batch, batch=10, ack_wait_s=1.0)
    async with running(rest.run):
        await eventually(lambda: rest.stats.applied == 100, within=60, what="the rest applied")
    assert await applied_seq(nc) == 200
    assert (await task.round(now=time.time() + 31 * DAY)).unapplied_kept == 0
    assert (await js.stream_info(subjects.EVENTS_STREAM)).state.messages == 0
    store.close()


async def test_a_purged_trace_is_refused_as_expired_not_answered_empty(tmp_path: Path, nc: Client) -> None:
    js = nc.jetstream()
    store = fill_outbox(tmp_path / "edge.db", 20, agents=2)
    async with running(OutboxPublisher(store, js).run):
        await eventually(lambda: not store.outbox_pending(1), within=60)
    agents = AgentRegistry(js)
    applier = EventApplier(js, agents.apply, apply_batch=agents.apply_batch)
    traces = Traces(js, agents, keep_days=30)
    async with running(applier.run):
        await eventually(lambda: applier.stats.applied == 20, within=60)
    assert len((await traces.page("agent-1", 0, "")).events) == 10  # readable within the retention

    await retention(nc, agents, events_days=30).round(now=time.time() + 31 * DAY)
    with pytest.raises(Refused) as refused:
        await traces.page("agent-1", 0, "")
    assert refused.value.code == ErrorCode.NOT_FOUND
    assert "expired" in refused.value.message
    assert "30 days" in refused.value.message
    store.close()


async def test_ended_migrations_are_pruned_with_their_handover_and_running_ones_kept(nc: Client) -> None:
    js = nc.jetstream()
    agents = AgentRegistry(js)
    task = retention(nc, agents, migrations_days=30)
    old = time.time() - 31 * DAY
    objects = await js.object_store(HANDOVERS)
    for agent, phase in (("a-done", H.MIGRATION_PHASE_DONE), ("a-moving", H.MIGRATION_PHASE_IMPORTING)):
        m = H.Migration(migration_id=f"mig-{agent}", agent_id=agent, phase=phase, updated_at=old)
        await task.migrations.store.replace(agent, m, None)
        await objects.put(m.migration_id, b"state")
    fresh = H.Migration(migration_id="mig-new", agent_id="a-new", phase=H.MIGRATION_PHASE_FAILED)
    fresh.updated_at = time.time()
    await task.migrations.store.replace("a-new", fresh, None)

    assert await task.prune_migrations(time.time() - 30 * DAY) == 1
    assert await task.migrations.get("a-done") is None
    assert await task.migrations.get("a-moving") is not None  # in flight: never pruned
    assert await task.migrations.get("a-new") is not None  # ended within the retention
    names = {o.name for o in await objects.list(ignore_deletes=True)}
    assert names == {"mig-a-moving"}


async def test_ensure_topology_sets_new_limits_on_existing_streams_in_place(nc: Client) -> None:
    js = nc.jetstream()
    await js.delete_stream(subjects.EVENTS_STREAM)
    await js.add_stream(STREAMS[0].config())  # as an earlier edgehub created it: no limits, DISCARD OLD
    await js.publish(subjects.events(DEVICE, "agent-0"), b"kept", stream=subjects.EVENTS_STREAM)
    limits = StreamLimits(events_max_bytes=1024**2, commands_max_bytes=512 * 1024, commands_max_age_s=3600)
    await ensure_topology(js, limits)
    await ensure_topology(js, limits)  # a second hub process: nothing to change
    events = await js.stream_info(subjects.EVENTS_STREAM)
    commands = await js.stream_info(subjects.COMMANDS_STREAM)
    assert (events.config.max_bytes, events.config.discard, events.config.max_age) == (
        1024**2,
        DiscardPolicy.NEW,
        0,
    )
    assert events.state.messages == 1, "updating the limits lost what the stream held"
    assert (commands.config.max_bytes, commands.config.max_age) == (512 * 1024, 3600)


async def test_a_full_events_stream_refuses_publishes_and_the_outbox_keeps_them_until_purged(
    tmp_path: Path, nc: Client
) -> None:
    js = nc.jetstream()
    await ensure_topology(js, StreamLimits(events_max_bytes=64 * 1024))
    store = fill_outbox(tmp_path / "edge.db", 2000, agents=4)  # ~200 KB of events
    publisher = OutboxPublisher(store, js, batch=50)
    async with running(publisher.run):
        await eventually(lambda: publisher.stats.failures > 0, within=60, what="a refused publish")
        full = store.outbox_depth()
        assert 0 < full < 2000, "the stream took everything or nothing"
        assert "maximum bytes" in publisher.last_error

        agents = AgentRegistry(js)
        applier = EventApplier(js, agents.apply, apply_batch=agents.apply_batch)
        purger = Purger(retention(nc, agents, events_days=1))
        async with running(applier.run, purger.run):
            await eventually(lambda: store.outbox_depth() == 0, within=120, what="the outbox to drain")
            await eventually(lambda: applier.stats.applied == 2000, within=60, what="each applied once")
    assert await applied_seq(nc) == 2000  # every sequence applied, in order, none skipped
    assert purger.rounds > 1
    store.close()


async def test_a_full_jetstream_store_refuses_publishes_and_the_outbox_delivers_all_once_there_is_room(
    tmp_path: Path,
) -> None:
    """The server's store (``max_file_store``) filled by another stream: the edge's publishes are
    refused with the server's reason, it keeps the events, and once the store has room again (the
    other stream purged) it delivers them all, each applied once."""
    server = await NatsServer.start(tmp_path / "nats", max_store=3 * 1024**2)
    nc = await connect_only(server)
    js = nc.jetstream()
    await ensure_topology(js, StreamLimits(events_max_bytes=128 * 1024, commands_max_bytes=64 * 1024))
    refused = ""
    for i in range(20_000):  # dead letters (no byte limit of their own) until the store is full
        try:
            await js.publish(subjects.deadletter("events"), b"\0" * 4096, stream=subjects.DEADLETTER_STREAM)
        except Exception as exc:
            refused = f"{exc} after {i}"
            break
    assert "insufficient resources" in refused, refused

    store = fill_outbox(tmp_path / "edge.db", 1000, agents=4)
    publisher = OutboxPublisher(store, js, batch=50)
    agents = AgentRegistry(js)
    applier = EventApplier(js, agents.apply, apply_batch=agents.apply_batch)
    purger = Purger(retention(nc, agents, events_days=1))
    async with running(publisher.run, applier.run, purger.run):
        await eventually(lambda: publisher.stats.failures > 0, within=60, what="a refused publish")
        assert "insufficient resources" in publisher.last_error
        assert store.outbox_depth() == 1000  # kept, every one
        await js.purge_stream(subjects.DEADLETTER_STREAM)  # room again
        await eventually(lambda: store.outbox_depth() == 0, within=120, what="the outbox to drain")
        await eventually(lambda: applier.stats.applied == 1000, within=60, what="each applied once")
    assert await applied_seq(nc) == 1000
    store.close()
    await nc.close()
    await server.stop()


async def connect_only(server: NatsServer) -> Client:
    """A client without the harness's default topology (whose 4 GB events stream would not fit)."""
    return await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)


async def test_the_hub_daemon_sets_its_retention_on_the_embedded_server_and_runs_the_task(
    tmp_path: Path,
) -> None:
    cfg = HubConfig.model_validate(
        {
            "hub": {"id": "hub-retention"},
            "nats": {"embedded_port": 0, "embedded_store": str(tmp_path / "nats")},
            "api": {"addr": "127.0.0.1:0", "device_addr": "127.0.0.1:0", "tls_names": ["127.0.0.1"]},
            "auth": {"dir": str(tmp_path / "trust")},
            "neo4j": {"enabled": False},
            "retention": {"events_max_mb": 2, "commands_max_mb": 1, "jetstream_max_store_mb": 64},
        }
    )
    async with HubDaemon(cfg) as hub:
        run = asyncio.create_task(hub.run())
        assert hub.nc is not None
        js = hub.nc.jetstream()
        assert "max_file_store: 67108864" in (tmp_path / "nats" / "nats.conf").read_text()
        events = await js.stream_info(subjects.EVENTS_STREAM)
        assert (events.config.max_bytes, events.config.discard) == (2 * 1024**2, DiscardPolicy.NEW)
        lease = Lease(js, "retention", "observer")
        await eventually(lambda: hub.retention is not None and hub.retention.lease.held, within=30)
        assert await lease.holder_now() == "hub-retention"
        hub.request_stop()
        await run
