"""Shadow reasoning on the edge (parity-gated rollouts), on scripted brains: what the shadow model
proposes is recorded in the outbox (masked) and never changes what the agent does; a model the device
does not hold, or whose bytes do not verify, is refused; steps offered while it is busy are skipped and
counted; a proposal past the timeout is dropped; stop unloads it."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path

import pytest

from edgehub.edge.agent.actions import parse_action
from edgehub.edge.agent.loop import AgentLoop, LoopDeps, new_agent
from edgehub.edge.agent.shadow import ModelCall, ShadowAsk
from edgehub.edge.agent.tools.gateway import ExecutionGateway
from edgehub.edge.agent.tools.registry import ToolRegistry
from edgehub.edge.config import AgentConfig, ToolsConfig
from edgehub.edge.datadir import model_path
from edgehub.edge.errors import ShadowRefused
from edgehub.edge.memory.compaction import Compactor
from edgehub.edge.metrics import DaemonCollector
from edgehub.edge.safety import Scrubber, VaultKey
from edgehub.edge.shadow import ShadowReasoner
from edgehub.edge.store.sqlite import SqliteStore
from edgehub.llm import Brain
from edgehub.llm.fake import FakeBrain
from edgehub.llm.gate import ModelGate
from edgehub.protocol.v1 import agent_pb2, models_pb2
from edgehub.sync.models import file_sha256
from tests.harness.wait import eventually
from tests.unit.test_loop import act

S, M = agent_pb2, models_pb2
ROLLOUT = "r-0123456789ab"


def held(data: Path, content: bytes = b"GGUF shadow model bytes") -> str:
    """A model file at its place in the data folder, named by its hash; its sha256."""
    tmp = data / "incoming.gguf"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(content)
    sha256 = file_sha256(tmp)
    target = model_path(data, sha256)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp.replace(target)
    return sha256


def reasoner(
    tmp_path: Path, store: SqliteStore, brain: Brain, timeout_s: float = 30.0
) -> tuple[ShadowReasoner, list[Path]]:
    opened: list[Path] = []

    def opener(path: Path) -> Brain:
        opened.append(path)
        return brain

    return ShadowReasoner(tmp_path, store.append_shadow_step, opener, timeout_s=timeout_s), opened


def shadow_steps(store: SqliteStore) -> list[M.ShadowStep]:
    return [e.event.shadow_step for e in store.outbox_pending() if e.event.HasField("shadow_step")]


def ask(step: int, thought: str = "go") -> ShadowAsk:
    call = ModelCall(f"prompt {step}", None, 64, False)
    return ShadowAsk("a1", 0, step, call, parse_action(act("finish", thought, answer="x")), "current")


async def test_the_shadow_proposal_is_recorded_masked_and_the_agent_runs_on_its_own_model(
    tmp_path: Path,
) -> None:
    store = SqliteStore.open(
        tmp_path / "edge.db", device_id="dev-1", outgoing=Scrubber(VaultKey(os.urandom(32)))
    )
    main = FakeBrain([act("write_file", path="a.txt", content="x"), act("finish", answer="ok")])
    other = FakeBrain(lambda p: act("read_file", "mail bob@example.com first", path="b.txt"))
    shadow, opened = reasoner(tmp_path, store, other)
    sha256 = held(tmp_path)
    await shadow.command(M.ShadowModel(rollout_id=ROLLOUT, sha256=sha256, name="other"))
    assert opened == [model_path(tmp_path, sha256)]
    assert shadow.rollout_id == ROLLOUT
    registry = ToolRegistry.default(ToolsConfig(load_entry_points=False))
    loop = AgentLoop(
        LoopDeps(
            store=store,
            registry=registry,
            gateway=ExecutionGateway(registry, store, observation_limit=600),
            model=ModelGate(main),
            count_tokens=main.count_tokens,
            compactor=Compactor(main),
            cfg=AgentConfig(),
            device_id="dev-1",
            workspaces=tmp_path / "ws",
            n_ctx=main.n_ctx,
            max_action_tokens=64,
            shadow=shadow,
        )
    )
    store.create_agent(new_agent("a1", "write a.txt"))
    state = await loop.run("a1", asyncio.Event())
    await eventually(lambda: shadow.counts.recorded == 2, within=10)

    assert state.status == S.AGENT_STATUS_FINISHED
    tools = [e.action.tool for e in store.mind_log("a1") if e.kind == S.STEP_KIND_ACTION]
    assert tools == ["write_file", "finish"]  # the shadow's read_file never ran
    assert (tmp_path / "ws" / "a1" / "a.txt").read_text() == "x"
    assert other.prompts == main.prompts  # the same prompts, in the same order
    steps = shadow_steps(store)
    assert [(s.step, s.current_tool, s.shadow_tool) for s in steps] == [
        (0, "write_file", "read_file"),
        (1, "finish", "read_file"),
    ]
    assert all(s.rollout_id == ROLLOUT and s.shadow_model == sha256 for s in steps)
    assert "bob@example.com" not in steps[0].shadow_thought  # masked like every outgoing event
    assert json.loads(steps[0].current_args) == {"path": "a.txt", "content": "x"}


async def test_a_model_not_held_or_not_verified_is_refused_with_the_reason(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path / "edge.db", device_id="dev-1")
    shadow, opened = reasoner(tmp_path, store, FakeBrain(["{}"]))
    with pytest.raises(ShadowRefused, match="is not held on this device"):
        await shadow.start(M.ShadowModel(rollout_id=ROLLOUT, sha256="a" * 64))
    sha256 = held(tmp_path)
    model_path(tmp_path, sha256).write_bytes(b"other bytes")
    with pytest.raises(ShadowRefused, match="does not verify"):
        await shadow.start(M.ShadowModel(rollout_id=ROLLOUT, sha256=sha256))
    with pytest.raises(ShadowRefused, match="not a SHA-256"):
        await shadow.start(M.ShadowModel(rollout_id=ROLLOUT, sha256="../../etc/passwd"))
    assert opened == []
    assert shadow.rollout_id == ""
    shadow.offer(ask(0))  # nothing in shadow: not even counted
    assert shadow.counts.offered == 0


async def test_steps_offered_while_the_shadow_is_busy_are_skipped_and_counted(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path / "edge.db", device_id="dev-1")
    release = threading.Event()

    def slow(prompt: str) -> str:
        release.wait(5)
        return act("finish", answer="y")

    shadow, _ = reasoner(tmp_path, store, FakeBrain(slow))
    await shadow.start(M.ShadowModel(rollout_id=ROLLOUT, sha256=held(tmp_path)))
    shadow.offer(ask(0))
    await asyncio.sleep(0.05)  # step 0 computes
    for step in range(1, 4):
        shadow.offer(ask(step))  # never blocks: one waits, two are skipped
    release.set()
    await eventually(lambda: shadow.counts.recorded == 2, within=10)
    assert (shadow.counts.offered, shadow.counts.skipped) == (4, 2)
    collector = DaemonCollector("dev-1", outbox_depth=lambda: 0, running=lambda: 0, published=lambda: None,
                                shadow=shadow.counts.by_outcome)  # fmt: skip
    family = next(f for f in collector.collect() if f.name == "edgehub_edge_shadow_steps")
    assert {s.labels["outcome"]: s.value for s in family.samples} == {
        "recorded": 2, "skipped": 2, "timeout": 0, "failed": 0
    }  # fmt: skip
    assert [s.step for s in shadow_steps(store)] == [0, 1]


async def test_a_late_proposal_is_dropped_and_stop_unloads_the_model(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path / "edge.db", device_id="dev-1")
    release = threading.Event()
    closed: list[bool] = []

    class Slow(FakeBrain):
        def close(self) -> None:
            closed.append(True)

    shadow, _ = reasoner(tmp_path, store, Slow(lambda p: (release.wait(5), act("finish"))[1]), timeout_s=0.1)
    await shadow.start(M.ShadowModel(rollout_id=ROLLOUT, sha256=held(tmp_path)))
    shadow.offer(ask(0))
    await eventually(lambda: shadow.counts.timeouts == 1, within=5)
    release.set()
    await shadow.command(M.ShadowModel(rollout_id="r-other", stop=True))  # another rollout's: kept
    assert shadow.rollout_id == ROLLOUT
    await shadow.command(M.ShadowModel(rollout_id=ROLLOUT, stop=True))
    assert (shadow.rollout_id, closed) == ("", [True])
    assert shadow_steps(store) == []
    shadow.offer(ask(1))
    assert shadow.counts.offered == 1


async def test_a_restarted_daemon_shadows_again_until_told_to_stop(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path / "edge.db", device_id="dev-1")
    sha256 = held(tmp_path)
    first, _ = reasoner(tmp_path, store, FakeBrain(["{}"]))
    await first.start(M.ShadowModel(rollout_id=ROLLOUT, sha256=sha256, name="n"))
    await first.shutdown()  # the daemon stops: what it shadowed is kept
    again, opened = reasoner(tmp_path, store, FakeBrain(["{}"]))
    await again.resume()
    assert (again.rollout_id, again.sha256, opened) == (ROLLOUT, sha256, [model_path(tmp_path, sha256)])
    await again.stop(ROLLOUT)
    third, opened = reasoner(tmp_path, store, FakeBrain(["{}"]))
    await third.resume()
    assert (third.rollout_id, opened) == ("", [])


async def test_an_unreadable_or_refused_shadow_state_is_dropped(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path / "edge.db", device_id="dev-1")
    for text in (
        "{not json",
        '{"version": 99}',
        '{"version": 1, "rollout_id": "r-1", "sha256": "' + "c" * 64 + '"}',
    ):
        (tmp_path / "shadow.json").write_text(text)
        shadow, opened = reasoner(tmp_path, store, FakeBrain(["{}"]))
        await shadow.resume()
        assert (shadow.rollout_id, opened) == ("", [])
        assert not (tmp_path / "shadow.json").exists()
