"""Memory given back when the daemon goes idle (``edgehub.edge.trim``) and the embedding model that an
idle daemon drops (``LazyEmbedder``, measured on this process's real mappings)."""

from __future__ import annotations

import asyncio
import gc
import os

from edgehub.edge.footprint import measure
from edgehub.edge.memory.embed import LazyEmbedder
from edgehub.edge.trim import IdleTrim, malloc_trim

MiB = 1 << 20


def test_trims_once_after_each_busy_period_once_settled() -> None:
    running = [0]
    trim = IdleTrim(lambda: running[0], settle_s=5)
    assert not trim.tick(0)  # idle from the start: nothing to give back
    running[0] = 1
    assert not trim.tick(1)
    running[0] = 0
    assert not trim.tick(2)
    assert not trim.tick(6.9)  # the indexer may still be embedding the last steps
    assert trim.tick(7.0)
    assert not trim.tick(60)  # once
    running[0] = 2
    trim.tick(61)
    running[0] = 0
    trim.tick(62)
    assert trim.tick(67)


def test_a_trim_releases_collects_and_trims_the_heap() -> None:
    released: list[str] = []
    trim = IdleTrim(lambda: 0, [lambda: released.append("embedder")])
    trim.trim()
    assert released == ["embedder"]
    assert trim.trims == 1
    assert malloc_trim() in (True, False)  # glibc here; False is what musl gets


def test_run_trims_after_the_last_agent_and_stops_with_the_daemon() -> None:
    running = [1]
    trim = IdleTrim(lambda: running[0], settle_s=0.05, poll_s=0.01)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(trim.run(stop))
        await asyncio.sleep(0.05)
        running[0] = 0
        for _ in range(200):
            if trim.trims:
                break
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 2)

    asyncio.run(scenario())
    assert trim.trims == 1


def test_the_embedding_model_is_file_pages_and_goes_when_released() -> None:
    embedder = LazyEmbedder()
    assert not embedder.loaded  # nothing until the first embedding
    base = measure(os.getpid()).embeddings  # other tests in this process may map the model too
    vectors = embedder.embed(["the coolant pump is loud", "pump noise"])
    assert vectors.shape == (2, embedder.dim)
    loaded = measure(os.getpid()).embeddings - base
    assert loaded > 20 * MiB  # the weights a forward pass read, as pages of the file
    assert embedder.release()
    gc.collect()
    assert measure(os.getpid()).embeddings - base < loaded // 4
    again = embedder.embed(["the coolant pump is loud"])  # loaded again on demand, same result
    assert float(again[0] @ vectors[0]) > 0.9999
