"""The loop's escalation logic on a scripted brain and a scripted hub: when a step is asked of the hub's
model, that its action is the one executed, and that the device's own action stands when the hub cannot
answer, the mind-log saying which."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from edgehub.edge.agent.escalation import Escalation, reason_for, within_share
from edgehub.edge.agent.loop import AgentLoop, LoopDeps, new_agent
from edgehub.edge.agent.tools.gateway import ExecutionGateway
from edgehub.edge.agent.tools.registry import ToolRegistry
from edgehub.edge.config import AgentConfig, EscalationConfig, ToolsConfig
from edgehub.edge.memory.compaction import Compactor
from edgehub.edge.store.sqlite import SqliteStore
from edgehub.edge.uplink.fake import FakeEscalator
from edgehub.llm.fake import FakeBrain
from edgehub.llm.gate import ModelGate
from edgehub.protocol.v1 import agent_pb2

S = agent_pb2
ON = EscalationConfig(enabled=True, min_confidence=0.2)


def act(tool: str, **args: object) -> str:
    return json.dumps({"thought": "go", "tool": tool, "args": args})


def make_loop(
    tmp_path: Path,
    script: list[str],
    hub: FakeEscalator,
    confidence: float | None,
    cfg: EscalationConfig = ON,
    needs_hub: bool = False,
) -> tuple[AgentLoop, SqliteStore]:
    store = SqliteStore.open(tmp_path / "edge.db", device_id="dev-1")
    brain = FakeBrain(script, confidence=lambda text: confidence)
    registry = ToolRegistry.default(ToolsConfig(load_entry_points=False))
    escalation = Escalation(cfg, hub, max_tokens=64, needs_hub=lambda tool, args: needs_hub)
    deps = LoopDeps(
        store=store,
        registry=registry,
        gateway=ExecutionGateway(registry, store, observation_limit=600),
        model=ModelGate(brain),
        count_tokens=brain.count_tokens,
        compactor=Compactor(brain),
        cfg=AgentConfig(guide=False),
        device_id="dev-1",
        workspaces=tmp_path / "ws",
        n_ctx=brain.n_ctx,
        max_action_tokens=64,
        escalation=escalation,
    )
    return AgentLoop(deps), store


async def run(
    loop: AgentLoop, store: SqliteStore, budget: agent_pb2.Budget | None = None
) -> agent_pb2.AgentState:
    store.create_agent(new_agent("a1", "write x", budget))
    return await loop.run("a1", asyncio.Event())


async def test_a_low_confidence_step_runs_the_hubs_action_and_counts_its_tokens(tmp_path: Path) -> None:
    hub = FakeEscalator([act("write_file", path="x.txt", content="from the hub")], tokens=120)
    script = [act("write_file", path="x.txt", content="from the edge"), act("finish", answer="done")]
    loop, store = make_loop(tmp_path, script, hub, confidence=0.05)
    hub.script.append(act("finish", answer="done"))  # the finish step is unsure too
    state = await run(loop, store)
    assert state.status == S.AGENT_STATUS_FINISHED, state
    assert (tmp_path / "ws" / "a1" / "x.txt").read_text() == "from the hub"
    first = store.mind_log("a1")[0]
    assert first.detail.startswith(
        "escalated (confidence, confidence 0.050): the hub's model fake-hub chose write_file"
    )
    assert "the device's model had chosen write_file" in first.detail
    assert [a.reason for a in hub.asked] == ["confidence", "confidence"]
    assert hub.asked[0].schema is not None
    assert len(hub.asked[0].schema["anyOf"]) > 1
    assert hub.asked[0].max_tokens == 64
    assert state.usage.escalated_tokens == 240


async def test_a_confident_step_is_not_escalated(tmp_path: Path) -> None:
    hub = FakeEscalator([])
    loop, store = make_loop(tmp_path, [act("finish", answer="mine")], hub, confidence=0.2)
    state = await run(loop, store)  # exactly at the threshold: not below it
    assert state.answer == "mine"
    assert hub.asked == []
    assert "escalat" not in store.mind_log("a1")[0].detail


async def test_when_the_hub_cannot_answer_the_devices_action_runs_and_the_mind_log_says_so(
    tmp_path: Path,
) -> None:
    hub = FakeEscalator(["!no answer from the hub within 1 s"])
    loop, store = make_loop(tmp_path, [act("finish", answer="mine")], hub, confidence=0.01)
    state = await run(loop, store)
    assert state.status == S.AGENT_STATUS_FINISHED
    assert state.answer == "mine"
    detail = store.mind_log("a1")[0].detail
    assert detail.startswith(
        "escalation failed (confidence, confidence 0.010): no answer from the hub within 1 s"
    )
    assert "the device's own action stands" in detail
    assert state.usage.escalated_tokens == 0


async def test_a_hub_answer_that_is_no_action_leaves_the_devices_action(tmp_path: Path) -> None:
    hub = FakeEscalator(["this is not json"])
    loop, store = make_loop(tmp_path, [act("finish", answer="mine")], hub, confidence=0.01)
    state = await run(loop, store)
    assert state.answer == "mine"
    assert "the hub's answer is no action" in store.mind_log("a1")[0].detail
    assert state.usage.escalated_tokens == 100  # the hub's model worked for it all the same


async def test_a_policy_rule_escalates_whatever_the_confidence(tmp_path: Path) -> None:
    hub = FakeEscalator([act("finish", answer="hub's")])
    loop, store = make_loop(tmp_path, [act("finish", answer="mine")], hub, confidence=None, needs_hub=True)
    state = await run(loop, store)
    assert state.answer == "hub's"
    assert hub.asked[0].reason == "policy"
    assert hub.asked[0].confidence is None


async def test_the_hubs_share_of_the_budget_is_kept(tmp_path: Path) -> None:
    """Budget 4,000 tokens, share 0.5: the first escalation (estimate: prompt + 64) fits, its 1,800
    tokens leave too little for the next, which is not asked and says why."""
    hub = FakeEscalator([act("write_file", path="y.txt", content="hub")], tokens=1800)
    cfg = EscalationConfig(enabled=True, min_confidence=0.5, max_tokens_share=0.5)
    script = [act("write_file", path="y.txt", content="edge"), act("finish", answer="ok")]
    loop, store = make_loop(tmp_path, script, hub, confidence=0.1, cfg=cfg)
    state = await run(loop, store, S.Budget(max_tokens=4000))
    assert len(hub.asked) == 1
    log = store.mind_log("a1")
    assert log[1].detail.startswith("not escalated (confidence, confidence 0.100): the hub's share")
    assert state.answer == "ok"
    assert state.usage.escalated_tokens == 1800
    assert (tmp_path / "ws" / "a1" / "y.txt").read_text() == "hub"


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"confidence": 0.1, "choices": 3}, "confidence"),
        ({"confidence": 0.3, "choices": 3}, None),
        ({"confidence": None, "choices": 3}, None),  # not measured: never a reason
        ({"confidence": 0.01, "choices": 1}, None),  # a guided step chooses nothing
        ({"confidence": 0.9, "choices": 3, "stuck_warned": True}, "stuck"),
        ({"confidence": 0.01, "choices": 3, "stuck_warned": True, "policy_needs_hub": True}, "policy"),
    ],
)
def test_the_reason_to_escalate(kw: dict[str, object], expected: str | None) -> None:
    args = {"stuck_warned": False, "policy_needs_hub": False, **kw}
    assert reason_for(ON, **args) == expected  # type: ignore[arg-type]
    assert reason_for(EscalationConfig(enabled=False, min_confidence=0.2), **args) is None  # type: ignore[arg-type]


def test_on_stuck_off_ignores_the_monitors_warning() -> None:
    cfg = EscalationConfig(enabled=True, on_stuck=False)
    assert reason_for(cfg, confidence=0.9, choices=3, stuck_warned=True, policy_needs_hub=False) is None


def test_the_share_counts_what_was_spent_and_the_estimate() -> None:
    usage = S.Usage(escalated_tokens=300)
    cfg = EscalationConfig(enabled=True, max_tokens_share=0.5)
    assert within_share(cfg, usage, 1000, 200)
    assert not within_share(cfg, usage, 1000, 201)
    assert not within_share(EscalationConfig(enabled=True, max_tokens_share=0.0), S.Usage(), 1000, 1)
