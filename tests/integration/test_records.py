"""The one KV record store (``edgehub.sync.records``) on a real nats-server: typed reads and writes,
compare-and-set with bounded retries, unreadable records, and watches."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client

from edgehub.protocol.v1 import twin_pb2
from edgehub.sync import NatsServer
from edgehub.sync.records import (
    ChangeKind,
    ProtoCodec,
    RecordConflict,
    RecordExists,
    RecordStore,
    RecordUnreadable,
    Stored,
    TextCodec,
)
from edgehub.sync.streams import DEVICES, LEASES
from tests.harness.nats import connect, nats_server  # noqa: F401 - fixture

TWINS = ProtoCodec(twin_pb2.DeviceTwin, 1)


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:  # noqa: F811 - the fixture above
    client = await connect(nats_server)
    yield client
    await client.close()


def twin(device: str, load: float = 0.0) -> twin_pb2.DeviceTwin:
    return twin_pb2.DeviceTwin(device_id=device, load=load)


async def test_records_round_trip_typed_and_ids_are_encoded_into_keys(nc: Client) -> None:
    store = RecordStore(nc.jetstream(), DEVICES.name, TWINS)
    assert await store.get("dev 1") is None
    created = await store.create("dev 1", twin("dev 1", 0.5))
    assert created.key == "=" + b"dev 1".hex()  # the escaped form (issue 17: was "x-", which ids could take)
    got = await store.get("dev 1")
    assert got is not None
    assert (got.value.device_id, got.value.load, got.value.schema_version) == ("dev 1", 0.5, 1)
    assert got.revision == created.revision
    with pytest.raises(RecordExists):
        await store.create("dev 1", twin("dev 1"))
    assert [s.value.device_id for s in await store.list()] == ["dev 1"]


async def test_update_retries_a_lost_race_and_gives_up_after_its_bound(nc: Client) -> None:
    store = RecordStore(nc.jetstream(), DEVICES.name, TWINS)
    await store.put("d", twin("d", 1.0))
    interfered = 0

    async def change(found: Stored[twin_pb2.DeviceTwin] | None) -> twin_pb2.DeviceTwin:
        nonlocal interfered
        assert found is not None
        if interfered < 2:  # another writer gets in between the read and the write, twice
            interfered += 1
            await store.put("d", twin("d", found.value.load + 10))
        return twin("d", found.value.load + 1)

    result = await store.update("d", change)
    assert result is not None
    assert result.value.load == 22.0  # 1 + 10 + 10 (the interlopers), then + 1: nothing overwritten

    async def always_interfere(found: Stored[twin_pb2.DeviceTwin] | None) -> twin_pb2.DeviceTwin:
        await store.put("d", twin("d", 0.0))
        return twin("d", 99.0)

    with pytest.raises(RecordConflict) as info:
        await store.update("d", always_interfere, attempts=3)
    assert info.value.retryable
    got = await store.get("d")
    assert got is not None
    assert got.value.load == 0.0


async def test_a_change_that_returns_nothing_writes_nothing(nc: Client) -> None:
    store = RecordStore(nc.jetstream(), DEVICES.name, TWINS)
    first = await store.create("d", twin("d"))
    same = await store.update("d", lambda found: None)
    assert same is not None
    assert same.revision == first.revision
    assert await store.update("absent", lambda found: None) is None
    assert await store.get("absent") is None


async def test_compare_and_set_by_revision_and_guarded_deletes(nc: Client) -> None:
    store = RecordStore(nc.jetstream(), LEASES.name, TextCodec(), keyed=False)
    first = await store.replace("events", "hub-a", None)
    with pytest.raises(RecordConflict):
        await store.replace("events", "hub-b", None)  # someone holds it
    second = await store.replace("events", "hub-a", first.revision)
    with pytest.raises(RecordConflict):
        await store.replace("events", "hub-b", first.revision)  # stale revision
    with pytest.raises(RecordConflict):
        await store.delete("events", revision=first.revision)
    await store.delete("events", revision=second.revision)
    assert await store.get("events") is None


async def test_unreadable_and_newer_records_are_refused_clearly_and_left_out_of_listings(nc: Client) -> None:
    js = nc.jetstream()
    raw = RecordStore(js, DEVICES.name, TextCodec())
    await raw.put("garbage", "\xff not a twin")
    newer = twin_pb2.DeviceTwin(schema_version=9, device_id="future")
    kv = await raw.kv()
    await kv.put("future", newer.SerializeToString())
    store = RecordStore(js, DEVICES.name, TWINS)
    await store.put("ok", twin("ok"))
    with pytest.raises(RecordUnreadable, match="schema version 9"):
        await store.get("future")
    with pytest.raises(RecordUnreadable):
        await store.get("garbage")
    assert [s.key for s in await store.list()] == ["ok"]


async def test_a_watch_delivers_the_snapshot_then_each_change_once(nc: Client) -> None:
    store = RecordStore(nc.jetstream(), DEVICES.name, TWINS)
    await store.put("a", twin("a"))
    async with store.watch() as watch:
        first = await watch.next(2.0)
        assert first is not None
        assert (first.kind, first.key) == (ChangeKind.PUT, "a")
        synced = await watch.next(2.0)
        assert synced is not None
        assert synced.kind == ChangeKind.SYNCED
        assert await watch.next(0.2) is None  # nothing new
        await store.put("b", twin("b", 2.0))
        await store.delete("a")
        raw = await store.kv()
        await raw.put("c", b"\x08\xff\xff")  # not a twin
        seen = [await watch.next(2.0) for _ in range(3)]
    assert [(c.kind, c.key) for c in seen if c is not None] == [
        (ChangeKind.PUT, "b"),
        (ChangeKind.DELETE, "a"),
        (ChangeKind.UNREADABLE, "c"),
    ]
    assert seen[0] is not None
    assert seen[0].value is not None
    assert seen[0].value.load == 2.0
    assert seen[0].stored_at is not None
    assert await store.last_revision() >= 4


async def test_concurrent_updates_of_one_record_all_land(nc: Client) -> None:
    store = RecordStore(nc.jetstream(), DEVICES.name, TWINS)
    await store.put("n", twin("n", 0.0))

    def inc(found: Stored[twin_pb2.DeviceTwin] | None) -> twin_pb2.DeviceTwin:
        assert found is not None
        return twin("n", found.value.load + 1)

    await asyncio.gather(*(store.update("n", inc, attempts=64) for _ in range(12)))
    got = await store.get("n")
    assert got is not None
    assert got.value.load == 12.0
