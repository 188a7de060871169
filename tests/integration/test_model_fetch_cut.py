"""A model fetch whose link is cut (the nats-server killed mid-transfer) goes on from the bytes it had
when the server is back, in the same daemon: a real nats-server and the device's real fetcher, the
model put into the object store with the hub's chunk size."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from nats.js.api import ObjectMeta, ObjectMetaOptions

from edgehub.edge.models import ModelFetcher, ModelShelf
from edgehub.protocol.v1 import models_pb2
from edgehub.sync import NatsServer
from edgehub.sync.models import CHUNK_SIZE, MODELS
from tests.harness.nats import connect, nats_server  # noqa: F401 - fixture
from tests.harness.wait import eventually
from tests.integration.test_models_from_hub import made_up_gguf


def _have(shelf: ModelShelf, sha: str) -> int:
    record = shelf.get(sha)
    return record.have if record is not None else 0


async def test_a_fetch_cut_by_a_killed_nats_server_goes_on_from_its_bytes_when_it_is_back(
    tmp_path: Path,
    nats_server: NatsServer,  # noqa: F811
) -> None:
    file = tmp_path / "m.gguf"
    size = 160 * CHUNK_SIZE + 11
    sha = made_up_gguf(file, size, "cut")
    hub = await connect(nats_server, "hub")
    objects = await hub.jetstream().object_store(MODELS)
    meta = ObjectMeta(name=sha, options=ObjectMetaOptions(max_chunk_size=CHUNK_SIZE))
    with file.open("rb") as f:
        await objects.put(sha, f, meta=meta)
    await hub.close()

    device = await connect(nats_server, "device")
    shelf = ModelShelf(tmp_path / "device")
    fetcher = ModelFetcher(shelf, lambda: device, retry_s=0.2)
    stop = asyncio.Event()
    running = asyncio.create_task(fetcher.run(stop))
    try:
        fetcher.request(models_pb2.FetchModel(sha256=sha, name="m", size=size))
        await eventually(lambda: _have(shelf, sha) >= 3 * CHUNK_SIZE, within=30, interval=0.002)
        await nats_server.kill()
        cut = _have(shelf, sha)
        assert 0 < cut < size, cut
        await asyncio.sleep(1.0)  # offline: it waits, keeps what it has
        record = shelf.get(sha)
        assert record is not None
        assert (record.state, record.have) == ("fetching", cut)
        await nats_server.restart()
        await eventually(lambda: (r := shelf.get(sha)) is not None and r.state == "verified", within=60)
        assert fetcher.fetched == size  # every byte read once: it went on, it did not start over
    finally:
        stop.set()
        await running
        await device.close()
    assert hashlib.sha256(shelf.path(sha).read_bytes()).hexdigest() == sha
    assert not shelf.part(sha).exists()
