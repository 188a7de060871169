"""The hub's MigrationService against a real nats-server: recovery of a migration whose hub process
died between two of its steps (``redrive``), and the source's hand-over repeated after such a death,
each alone and racing each other. The devices are played by the test (their side is covered with
real edge daemons in test_migration_faults.py, where these are the recovery paths under a SIGKILLed
hub); here each path is driven on its own, so a path that does not recover fails by name.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client

from edgehub.hub.errors import MigrationError
from edgehub.hub.fleet.agents import AgentRegistry
from edgehub.hub.fleet.migration import BUNDLE_SCHEMA_VERSION, MigrationService, digest_of
from edgehub.protocol import subjects
from edgehub.protocol.v1 import agent_pb2, commands_pb2, events_pb2, hub_pb2, twin_pb2
from edgehub.sync import NatsServer
from tests.harness.nats import connect, nats_server  # noqa: F401 - fixture

S = agent_pb2
AGENT = "mover"


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:  # noqa: F811 - the fixture above
    client = await connect(nats_server)
    yield client
    await client.close()


async def twins() -> list[hub_pb2.Device]:
    now = time.time()
    return [
        hub_pb2.Device(
            device_id=d,
            online=True,
            twin=twin_pb2.DeviceTwin(
                device_id=d, state=twin_pb2.DEVICE_STATE_RUNNING, sent_at=now, heartbeat_s=5
            ),
        )
        for d in ("dev-a", "dev-b")
    ]


def step(device: str, n: int, epoch: int = 0) -> events_pb2.EdgeEvent:
    event = events_pb2.EdgeEvent(event_id=f"{AGENT}/{epoch}/{n}", device_id=device, seq=n, agent_id=AGENT)
    event.epoch = epoch
    event.step.CopyFrom(
        S.StepEvent(
            event_id=f"{AGENT}/{epoch}/{n}/action",
            agent_id=AGENT,
            device_id=device,
            epoch=epoch,
            step=n,
            kind=S.STEP_KIND_ACTION,
            status=S.AGENT_STATUS_RUNNING,
        )
    )
    return event


def bundle(at_step: int) -> bytes:
    b = S.AgentBundle(schema_version=BUNDLE_SCHEMA_VERSION, source_device="dev-a")
    b.state.agent_id = AGENT
    b.state.step = at_step
    b.exported_at.GetCurrentTime()
    return b.SerializeToString()


async def migrate_ins(nc: Client) -> list[commands_pb2.Command]:
    """The MigrateIn commands queued for dev-b."""
    sub = await nc.jetstream().pull_subscribe(subjects.commands("dev-b"), stream=subjects.COMMANDS_STREAM)
    out: list[commands_pb2.Command] = []
    try:
        while True:
            out += [commands_pb2.Command.FromString(m.data) for m in await sub.fetch(100, timeout=0.3)]
    except TimeoutError:
        pass
    finally:
        await sub.unsubscribe()
    return [c for c in out if c.WhichOneof("body") == "migrate_in"]


async def died_after_transfer(nc: Client) -> tuple[AgentRegistry, hub_pb2.Migration, bytes]:
    """A migration of dev-a's agent (at step 5) to dev-b whose hub process stored the source's state
    and moved the agent's epoch, then died before it recorded ``importing`` (the failpoint
    ``migration.transferred``)."""
    registry = AgentRegistry(nc.jetstream())
    await registry.apply(step("dev-a", 5))
    hub = MigrationService(nc.jetstream(), registry, twins)
    m = await hub.start(AGENT, "dev-b", by="op")
    data = bundle(5)
    await (await hub._store()).put(m.migration_id, data)
    assert await registry.transfer(AGENT, 0, 1, "dev-b", 5, m.migration_id)
    return registry, m, data


async def assert_handed_to_target(
    nc: Client, svc: MigrationService, m: hub_pb2.Migration, data: bytes
) -> None:
    record = await svc.get(AGENT)
    assert record is not None
    assert record.phase == hub_pb2.MIGRATION_PHASE_IMPORTING
    assert (record.digest, int(record.step)) == (digest_of(data), 5)
    ins = await migrate_ins(nc)
    assert len(ins) == 1, ins  # sent once (a second send has the same id: JetStream drops it)
    assert (ins[0].migrate_in.epoch, ins[0].migrate_in.digest) == (1, digest_of(data))
    got = await svc.get_handover(
        "dev-b", hub_pb2.GetHandoverRequest(agent_id=AGENT, migration_id=m.migration_id)
    )
    assert (got.bundle, got.epoch) == (data, 1)
    agent = await svc.agents.get(AGENT)
    assert agent is not None
    assert (agent.device_id, agent.epoch) == ("dev-b", 1)


async def test_a_restarted_hub_rolls_forward_a_migration_whose_epoch_had_moved(nc: Client) -> None:
    registry, m, data = await died_after_transfer(nc)
    restarted = MigrationService(nc.jetstream(), registry)
    assert await restarted.redrive(older_than_s=3600) == 0  # recent: left to the source's retry
    assert await restarted.redrive() == 1
    await assert_handed_to_target(nc, restarted, m, data)


async def test_the_sources_repeated_hand_over_finishes_it_too(nc: Client) -> None:
    registry, m, data = await died_after_transfer(nc)
    restarted = MigrationService(nc.jetstream(), registry, twins)
    req = hub_pb2.PutHandoverRequest(
        agent_id=AGENT, migration_id=m.migration_id, bundle=data, digest=digest_of(data)
    )
    answer = await restarted.put_handover("dev-a", req)
    assert answer.phase == hub_pb2.MIGRATION_PHASE_IMPORTING
    await assert_handed_to_target(nc, restarted, m, data)


async def test_the_redrive_and_the_sources_retry_racing_hand_over_once(nc: Client) -> None:
    registry, m, data = await died_after_transfer(nc)
    one = MigrationService(nc.jetstream(), registry, twins)
    two = MigrationService(nc.jetstream(), registry, twins)
    req = hub_pb2.PutHandoverRequest(
        agent_id=AGENT, migration_id=m.migration_id, bundle=data, digest=digest_of(data)
    )
    outcomes = await asyncio.gather(one.put_handover("dev-a", req), two.redrive(), return_exceptions=True)
    for outcome in outcomes:  # the loser of the compare-and-set is told to retry; nothing else fails
        if isinstance(outcome, BaseException):
            assert isinstance(outcome, MigrationError), outcome
            assert outcome.code == "ABORTED"
    answer = await one.put_handover("dev-a", req)  # the source's next retry
    assert answer.phase == hub_pb2.MIGRATION_PHASE_IMPORTING
    await assert_handed_to_target(nc, one, m, data)


async def test_a_hub_that_died_before_sending_migrate_in_sends_it_when_restarted(nc: Client) -> None:
    registry, m, data = await died_after_transfer(nc)
    hub = MigrationService(nc.jetstream(), registry, twins)
    found = await hub.store.get(AGENT)
    assert found is not None
    m2 = found.value
    m2.phase, m2.digest, m2.step, m2.bytes = hub_pb2.MIGRATION_PHASE_IMPORTING, digest_of(data), 5, len(data)
    await hub._put(m2, found.revision)  # recorded importing, died (``migration.importing``)
    assert not await migrate_ins(nc)
    assert await MigrationService(nc.jetstream(), registry).redrive() == 1
    await assert_handed_to_target(nc, hub, m, data)
