"""The real daemon gives back what an agent loaded once its agents are done (``edge/trim.py``): the
embedding model its steps were indexed with is dropped, and its mapped pages leave the process."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from edgehub.edge.app import EdgeDaemon
from edgehub.edge.config import EdgeConfig
from edgehub.edge.footprint import measure
from edgehub.edge.memory.embed import LazyEmbedder
from edgehub.llm.fake import FakeBrain
from edgehub.protocol.v1 import agent_pb2
from tests.harness.wait import eventually

MiB = 1 << 20


def act(tool: str, thought: str = "go", **args: object) -> str:
    return json.dumps({"thought": thought, "tool": tool, "args": args})


async def test_the_daemon_drops_the_embedding_model_after_its_last_agent(tmp_path: Path) -> None:
    script = [
        act("write_file", thought="Log the reading", path="p3.txt", content="P-3 vibration 11.2 mm/s"),
        act("finish", thought="done", answer="ok"),
    ]
    cfg = EdgeConfig.model_validate(
        {
            "device": {"id": "dev-trim", "data_dir": str(tmp_path / "edge")},
            "tools": {"load_entry_points": False},
        }
    )
    async with EdgeDaemon(cfg, brain=FakeBrain(script)) as edge:
        assert edge.indexer is not None
        embedder = edge.indexer.memory.embedder
        assert isinstance(embedder, LazyEmbedder)
        assert not embedder.loaded  # an idle daemon has not loaded it
        base = measure(os.getpid()).embeddings  # other tests in this process may map the model too
        runner = asyncio.create_task(edge.run())
        agent_id = edge.submit("check pump P-3")
        await eventually(lambda: embedder.loaded, within=30, what="the agent's steps embedded")
        await eventually(lambda: not edge.parts.scheduler.running, within=30, what="the agent done")
        loaded = measure(os.getpid()).embeddings  # within the 5 s the trim waits
        await eventually(lambda: not embedder.loaded, within=15, what="the model dropped 5 s later")
        after = measure(os.getpid()).embeddings
        edge.request_stop()
        await runner
        assert edge.store.load_agent(agent_id).status == agent_pb2.AGENT_STATUS_FINISHED
    assert loaded - base > 20 * MiB
    assert after - base < (loaded - base) // 4
