"""The warm worker under CRIU, on the real model: dump, restore, the same tokens; every failed restore
ends in a cold start that still answers; a daemon solves a goal across a checkpoint.

CRIU is installed by scripts/bootstrap.sh (scripts/criu.sh): when it is missing these tests fail, they
do not skip.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgehub.edge.app import EdgeDaemon
from edgehub.edge.config import AgentConfig, DeviceConfig, EdgeConfig, SnapshotConfig
from edgehub.edge.worker import Criu, Snapshots, WorkerBrain, find_criu
from edgehub.llm import LlamaSettings
from edgehub.llm.llama import LlamaBrain
from edgehub.protocol.v1 import agent_pb2
from tests.harness.wait import eventually

S = agent_pb2
pytestmark = pytest.mark.model

FIRST = "# Field notes\nThe river station logs the water level every hour. Today the level"
NEXT = "\nThe next reading, an hour later, showed"
GOAL = "Save the word green to leaf.txt, then read leaf.txt back and finish with what it says."


def criu() -> Criu:
    binary = find_criu()
    assert binary is not None, "no criu binary: scripts/bootstrap.sh installs it (scripts/criu.sh)"
    return Criu(binary)


@pytest.fixture
def folder() -> Iterator[Path]:
    path = Path("/dev/shm") / f"edgehub-test-criu-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def worker(folder: Path, llama_settings: LlamaSettings) -> Iterator[WorkerBrain]:
    brain = WorkerBrain.open(llama_settings, folder=folder, snapshots=Snapshots(folder, criu()))
    yield brain
    brain.close()


def expected_continuation(settings: LlamaSettings) -> tuple[str, str]:
    """What the model says to FIRST, then to FIRST + that + NEXT, in a fresh in-process brain."""
    brain = LlamaBrain.open(settings)
    try:
        first = brain.complete(FIRST, max_tokens=12).text
        return first, brain.complete(FIRST + first + NEXT, max_tokens=12).text
    finally:
        brain.close()


def test_a_restored_worker_generates_the_same_tokens_it_would_have_without_the_dump(
    worker: WorkerBrain, llama_settings: LlamaSettings
) -> None:
    first, second = expected_continuation(llama_settings)
    assert worker.complete(FIRST, max_tokens=12).text == first
    pid = worker._child.pid if worker._child else 0

    assert worker.checkpoint()
    assert not worker.awake
    assert not Path(f"/proc/{pid}").exists(), "the dumped worker must be gone (its memory freed)"
    assert worker.snapshots is not None
    assert (worker.snapshots.image / "manifest.json").exists()

    out = worker.complete(FIRST + first + NEXT, max_tokens=12)
    assert worker.wakes == ["cold", "restored"]
    assert out.text == second
    # the prompt cache came back with the process: only the new text was evaluated (and the previous
    # completion's last token, which stopped at max_tokens and so never entered the KV cache)
    assert out.evaluated_tokens <= worker.count_tokens(NEXT) + 1 < out.prompt_tokens / 2


def test_a_corrupt_image_falls_back_to_a_cold_start_that_still_answers(
    worker: WorkerBrain, llama_settings: LlamaSettings
) -> None:
    first, _ = expected_continuation(llama_settings)
    worker.complete(FIRST, max_tokens=12)
    assert worker.checkpoint()
    assert worker.snapshots is not None
    pages = sorted(worker.snapshots.image.glob("pages-*.img"))
    assert pages, "a dump without page images"
    with pages[0].open("r+b") as f:
        f.truncate(f.seek(0, os.SEEK_END) // 2)

    out = worker.complete(FIRST, max_tokens=12)
    assert worker.wakes[0] == "cold"
    assert worker.wakes[1].startswith("cold (image damaged: pages-"), worker.wakes
    assert out.text == first
    assert out.evaluated_tokens == out.prompt_tokens  # a cold worker has no cache


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("kernel", "5.10.0-old", "kernel changed"),
        ("model", "0000000000000000", "model changed"),
        ("cpu_flags", ["a_feature_no_cpu_has"], "this CPU lacks"),
    ],
)
def test_a_mismatched_manifest_is_refused_before_criu_and_the_worker_starts_cold(
    worker: WorkerBrain, llama_settings: LlamaSettings, field: str, value: object, reason: str
) -> None:
    first, _ = expected_continuation(llama_settings)
    worker.complete(FIRST, max_tokens=12)
    assert worker.checkpoint()
    assert worker.snapshots is not None
    path = worker.snapshots.image / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest[field] = value
    path.write_text(json.dumps(manifest))

    assert worker.complete(FIRST, max_tokens=12).text == first
    assert worker.wakes[1].startswith(f"cold ({reason}"), worker.wakes
    assert not (worker.snapshots.image / "restore.log").exists(), "CRIU must not have run"
    assert not worker.snapshots.image.exists(), "an image that can never fit is discarded"


def test_a_missing_criu_binary_means_cold_starts_that_still_answer(
    folder: Path, llama_settings: LlamaSettings
) -> None:
    first, _ = expected_continuation(llama_settings)
    gone = folder.parent / f"{folder.name}-criu"
    gone.mkdir(parents=True)
    shutil.copy(criu().binary, gone / "criu")
    brain = WorkerBrain.open(llama_settings, folder=folder, snapshots=Snapshots(folder, Criu(gone / "criu")))
    try:
        brain.complete(FIRST, max_tokens=12)
        assert brain.checkpoint()
        shutil.rmtree(gone)
        assert brain.complete(FIRST, max_tokens=12).text == first
        assert brain.wakes[1].startswith("cold ("), brain.wakes
    finally:
        brain.close()
        shutil.rmtree(gone, ignore_errors=True)


async def test_an_edge_daemon_with_snapshots_solves_a_goal_across_a_checkpoint(
    tmp_path: Path, folder: Path
) -> None:
    criu()  # a clear failure when CRIU is missing, not a daemon that quietly starts cold
    cfg = EdgeConfig(
        device=DeviceConfig(data_dir=tmp_path),
        agent=AgentConfig(max_steps=8),
        snapshot=SnapshotConfig(enabled=True, dir=folder, idle_s=1.0),
    )
    async with EdgeDaemon(cfg) as daemon:
        assert daemon.store is not None
        brain = daemon.brain.inner  # the daemon's brain holds the model it runs now
        assert isinstance(brain, WorkerBrain)
        runner = asyncio.create_task(daemon.run())
        await eventually(lambda: not brain.awake, within=60, what="the idle worker checkpointed")
        agent_id = daemon.submit(GOAL)
        store = daemon.store
        await eventually(
            lambda: store.load_agent(agent_id).status not in (S.AGENT_STATUS_PENDING, S.AGENT_STATUS_RUNNING),
            within=300,
            what="the agent finished",
        )
        daemon.request_stop()
        await runner
        state = store.load_agent(agent_id)
        tools = [e.action.tool for e in store.mind_log(agent_id) if e.kind == S.STEP_KIND_ACTION]

    assert "restored" in brain.wakes, brain.wakes
    assert state.status == S.AGENT_STATUS_FINISHED, (tools, state.failure_reason)
    assert "green" in state.answer
    assert (tmp_path / "workspaces" / agent_id / "leaf.txt").read_text() == "green"
