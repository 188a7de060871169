"""The hub's records in JetStream KV, typed (protobuf, ``edgehub.sync.records``), on a real nats-server:
what the release before stored as JSON is read through each store's legacy decoder, and the next write
stores it in protobuf. The JSON below is byte for byte the shape that release wrote."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client

from edgehub.hub.errors import EnrollmentRefused
from edgehub.hub.fleet.agents import AgentRegistry, fence
from edgehub.hub.fleet.devices import DeviceRegistry
from edgehub.hub.fleet.identity import Credentials, Enrollments, digest
from edgehub.hub.fleet.migration import MigrationService
from edgehub.hub.operators import ApiTokens
from edgehub.protocol.ids import kv_key
from edgehub.protocol.v1 import agent_pb2, events_pb2, hub_pb2, twin_pb2
from edgehub.sync import NatsServer
from edgehub.sync.streams import AGENTS, CREDENTIALS, DEVICES, ENROLLMENTS, MIGRATIONS, TOKENS
from tests.harness.nats import connect, nats_server  # noqa: F401 - fixture

S = agent_pb2


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:  # noqa: F811 - the fixture above
    client = await connect(nats_server)
    yield client
    await client.close()


async def put_json(nc: Client, bucket: str, key: str, record: dict[str, object]) -> None:
    """A record as the release before wrote it."""
    await (await nc.jetstream().key_value(bucket)).put(key, json.dumps(record).encode())


async def raw(nc: Client, bucket: str, key: str) -> bytes:
    return bytes((await (await nc.jetstream().key_value(bucket)).get(key)).value or b"")


def step(device: str, epoch: int, n: int) -> events_pb2.EdgeEvent:
    event = events_pb2.EdgeEvent(
        event_id=f"m/{epoch}/{n}", device_id=device, seq=n, agent_id="m", epoch=epoch
    )
    event.step.CopyFrom(
        S.StepEvent(event_id=f"m/{epoch}/{n}/a", agent_id="m", step=n, status=S.AGENT_STATUS_RUNNING)
    )
    return event


async def test_a_json_agent_record_is_read_fenced_and_rewritten_in_protobuf(nc: Client) -> None:
    await put_json(nc, AGENTS.name, "m", {
        "agent_id": "m", "device_id": "dev-b", "epoch": 1, "status": "awaiting_approval", "step": 7,
        "last_event": "m/1/7/a", "device_seq": 9, "updated_at": 1.5, "migration": "mig-1",
        "epochs": [
            {"epoch": 0, "device": "dev-a", "from_step": 0}, {"epoch": 1, "device": "dev-b", "from_step": 5},
        ],
    })  # fmt: skip
    registry = AgentRegistry(nc.jetstream())
    record = await registry.get("m")
    assert record is not None
    assert (record.device_id, record.epoch, record.status, record.step) == (
        "dev-b", 1, S.AGENT_STATUS_AWAITING_APPROVAL, 7
    )  # fmt: skip
    assert [(e.epoch, e.device, e.from_step) for e in record.epochs] == [(0, "dev-a", 0), (1, "dev-b", 5)]
    assert record.migration_id == "mig-1"
    assert "stale epoch" in fence(record, step("dev-a", 0, 6))  # the history still fences a stale copy
    assert await registry.apply_batch([step("dev-b", 1, 8)]) == []
    assert not (await raw(nc, AGENTS.name, "m")).startswith(b"{")  # written back in protobuf
    again = await registry.get("m")
    assert again is not None
    assert (again.step, again.migration_id, len(again.epochs)) == (8, "mig-1", 2)


async def test_a_json_migration_is_read_and_answered_typed(nc: Client) -> None:
    await put_json(nc, MIGRATIONS.name, "m", {
        "migration_id": "mig-1", "agent_id": "m", "source": "dev-a", "target": "dev-b", "from_epoch": 0,
        "to_epoch": 1, "phase": "rolled_back", "requested_by": "operator:admin", "started_at": 1.0,
        "updated_at": 2.0, "step": 5, "bytes": 100, "digest": "ab", "rolled_back_from": "dev-b", "error": "x",
    })  # fmt: skip
    migration = await MigrationService(nc.jetstream(), AgentRegistry(nc.jetstream())).latest("m")
    assert (migration.source_device, migration.target_device, migration.phase) == (
        "dev-a", "dev-b", hub_pb2.MIGRATION_PHASE_ROLLED_BACK
    )  # fmt: skip
    assert (migration.step, migration.bytes, migration.rolled_back_from, migration.updated_at) == (
        5,
        100,
        "dev-b",
        2.0,
    )


async def test_json_tokens_enrollments_and_credentials_keep_working(nc: Client) -> None:
    token = "eht_old"
    await put_json(nc, TOKENS.name, digest(token), {
        "name": "ops", "role": "operator", "created_by": "bootstrap", "created_at": 1.0, "expires_at": 0.0,
    })  # fmt: skip
    tokens = ApiTokens(nc.jetstream())
    principal = await tokens.operator(token)
    assert principal is not None
    assert (principal.name, principal.role) == ("operator:ops", hub_pb2.ROLE_OPERATOR)
    assert [(t.name, t.id) for t in await tokens.list()] == [("ops", digest(token)[:12])]

    await put_json(nc, ENROLLMENTS.name, digest("ehe_old"), {
        "device_id": "dev-a", "expires_at": time.time() + 60, "created_by": "operator:admin",
    })  # fmt: skip
    enrollments = Enrollments(nc.jetstream())
    with pytest.raises(EnrollmentRefused, match="for device 'dev-a', not 'dev-b'"):
        await enrollments.spend("ehe_old", "dev-b")
    await enrollments.spend("ehe_old", "dev-a")
    with pytest.raises(EnrollmentRefused, match="unknown or already used"):
        await enrollments.spend("ehe_old", "dev-a")

    await put_json(nc, CREDENTIALS.name, kv_key("dev-a"), {
        "device_id": "dev-a", "user_keys": {"UOLD": 10.0}, "revoked_at": 20.0, "revoked_by": "x",
        "reason": "y",
    })  # fmt: skip
    await put_json(nc, CREDENTIALS.name, kv_key("dev-c"), {
        "device_id": "dev-c", "user_keys": {"UC": 10.0}, "revoked_at": None,
    })  # fmt: skip
    credentials = Credentials(nc.jetstream())
    assert await credentials.revocations() == {"UOLD": 21}
    assert (await credentials.revoked_at("dev-a"), await credentials.revoked_at("dev-c")) == (20.0, None)
    await credentials.issued("dev-a", "UNEW")  # enrolled again: the old key stays revoked, the new one not
    assert await credentials.revocations() == {"UOLD": 21}


async def test_json_and_protobuf_twins_are_listed_alike_by_the_key_s_device(nc: Client) -> None:
    now = time.time()
    await put_json(nc, DEVICES.name, "dev-old", {
        "device_id": "dev-old", "state": "running", "heartbeat_s": 5, "sent_at": now, "version": "0.1.0",
        "hardware": {"arch": "aarch64", "cpus": 4, "kernel": "6.1"}, "load": 0.5, "outbox_depth": 2,
        "agents_running": ["a-1"], "max_concurrent": 2, "draining": False, "labels": {"site": "s1"},
        "profile": {"name": "raspberry-pi-5", "settings": {"threads": 4, "storage": "sd"}, "apply": True},
    })  # fmt: skip
    new = twin_pb2.DeviceTwin(schema_version=1, device_id="spoofed", state=twin_pb2.DEVICE_STATE_RUNNING)
    new.heartbeat_s, new.sent_at, new.version = 5, now, "0.2.0"
    kv = await nc.jetstream().key_value(DEVICES.name)
    await kv.put("dev-new", new.SerializeToString())
    refused = {d.device_id for d in await DeviceRegistry(nc.jetstream()).all(now)}
    assert refused == {"dev-old"}  # a twin naming another device than its key's is refused (issue 17)
    new.device_id = "dev-new"
    await kv.put("dev-new", new.SerializeToString())
    listed = {d.device_id: d for d in await DeviceRegistry(nc.jetstream()).all(now)}
    assert sorted(listed) == ["dev-new", "dev-old"]  # the key's id, never the twin's own field
    old = listed["dev-old"]
    assert old.online
    assert (old.twin.version, old.twin.hardware.cpus, list(old.twin.agents_running)) == ("0.1.0", 4, ["a-1"])
    assert (old.twin.profile.name, old.twin.profile.settings.threads, old.twin.profile.settings.storage) == (
        "raspberry-pi-5", 4, "sd"
    )  # fmt: skip
    assert dict(old.twin.labels) == {"site": "s1"}
    assert (listed["dev-new"].online, listed["dev-new"].twin.version) == (True, "0.2.0")
