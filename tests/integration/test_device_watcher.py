"""The hub's live device view (``DeviceWatcher``) on a real nats-server: heartbeats are timed and
counted online as ``DeviceRegistry`` counts them, a stale twin is not timed, and the watch comes back
after the server is killed and restarted. The fleet is mixed: twins in protobuf (``DeviceTwin``) and
in the JSON of the release before, read alike."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from nats.js.kv import KeyValue
from prometheus_client import CollectorRegistry

from edgehub.hub.fleet.devices import DeviceRegistry, DeviceWatcher
from edgehub.protocol.ids import kv_key
from edgehub.protocol.v1 import twin_pb2
from edgehub.sync import NatsServer
from edgehub.sync.streams import DEVICES
from tests.harness.nats import connect, nats_server  # noqa: F401 - fixture
from tests.harness.wait import eventually


async def beat(kv: KeyValue, device_id: str, *, state: str = "running", age_s: float = 0.0) -> None:
    """A twin as an edge of the release before wrote it (JSON)."""
    twin = {"device_id": device_id, "state": state, "heartbeat_s": 1.0, "sent_at": time.time() - age_s}
    await kv.put(kv_key(device_id), json.dumps(twin).encode())


async def beat_proto(kv: KeyValue, device_id: str) -> None:
    """A twin as a current edge writes it (``DeviceTwin``)."""
    twin = twin_pb2.DeviceTwin(schema_version=1, device_id=device_id, state=twin_pb2.DEVICE_STATE_RUNNING)
    twin.heartbeat_s, twin.sent_at = 1.0, time.time()
    await kv.put(kv_key(device_id), twin.SerializeToString())


def timed(metrics: CollectorRegistry) -> float:
    return metrics.get_sample_value("edgehub_hub_heartbeat_lag_seconds_count") or 0.0


def online(metrics: CollectorRegistry) -> float:
    return metrics.get_sample_value("edgehub_hub_devices_online") or 0.0


async def test_device_watcher_times_heartbeats_counts_online_and_survives_a_server_restart(
    tmp_path: Path,
    nats_server: NatsServer,  # noqa: F811
) -> None:
    nc = await connect(nats_server, "hub")
    kv = await nc.jetstream().key_value(DEVICES.name)
    await beat(kv, "dev-old", age_s=3600)  # already there when the hub starts: in the view, not timed
    metrics = CollectorRegistry()
    watcher = DeviceWatcher(nc.jetstream(), metrics, retry_s=0.2, idle_check_s=1.0)
    stop = asyncio.Event()
    task = asyncio.create_task(watcher.run(stop))
    try:
        await eventually(lambda: "dev-old" in watcher.view, within=10)
        await beat(kv, "dev-a")
        await beat_proto(kv, "dev-b")
        await beat(kv, "dev.c", state="stopped")
        await eventually(lambda: timed(metrics) == 3, within=10, what=lambda: f"{timed(metrics)} timed")
        assert online(metrics) == 2
        listed = {d.device_id: d.online for d in await DeviceRegistry(nc.jetstream()).all()}
        assert listed == {"dev-old": False, "dev-a": True, "dev-b": True, "dev.c": False}
        assert 0 <= (metrics.get_sample_value("edgehub_hub_heartbeat_lag_seconds_sum") or 0) < 3
        assert metrics.get_sample_value("edgehub_hub_heartbeat_queue_seconds_count") == 3

        await nats_server.kill()
        await nats_server.restart()
        await eventually(lambda: nc.is_connected, within=30)
        await beat(kv, "dev-a")
        await eventually(lambda: timed(metrics) == 4, within=30, what=lambda: f"{watcher.watches} watches")
        await kv.delete(kv_key("dev-b"))
        await eventually(lambda: "dev-b" not in watcher.view, within=10)
        assert online(metrics) == 1
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await nc.close()
