"""An agent on the real Gemma 3 270M model reaches finish through two different tools."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgehub.edge.app import EdgeDaemon
from edgehub.edge.config import AgentConfig, DeviceConfig, EdgeConfig
from edgehub.llm.llama import LlamaBrain
from edgehub.protocol.v1 import agent_pb2

S = agent_pb2
# The goal mirrors the prompt's worked example in shape (a 270M base model learns the format from it)
# but uses a different file and word, so the test fails if the agent copies the example verbatim.
GOAL = "Save the word green to leaf.txt, then read leaf.txt back and finish with what it says."

pytestmark = pytest.mark.model


async def test_agent_on_the_real_model_writes_reads_and_finishes(tmp_path: Path, brain: LlamaBrain) -> None:
    cfg = EdgeConfig(device=DeviceConfig(data_dir=tmp_path), agent=AgentConfig(max_steps=8))
    async with EdgeDaemon(cfg, brain=brain) as daemon:
        assert daemon.store is not None
        agent_id = daemon.submit(GOAL)
        await daemon.run(until_idle=True)
        state = daemon.store.load_agent(agent_id)
        log = daemon.store.mind_log(agent_id)

    actions = [e for e in log if e.kind == S.STEP_KIND_ACTION]
    tools = [e.action.tool for e in actions]
    assert state.status == S.AGENT_STATUS_FINISHED, (tools, state.failure_reason)
    assert {"write_file", "read_file", "finish"} <= set(tools)
    workspace = tmp_path / "workspaces" / agent_id
    write = next(e for e in actions if e.action.tool == "write_file" and e.observation.ok)
    args = json.loads(write.action.args_json)
    assert (workspace / args["path"]).read_text() == args["content"] == "green"
    read = next(e for e in actions if e.action.tool == "read_file")
    assert read.observation.ok
    assert read.observation.output == "green"
    assert "green" in state.answer
    # every step after the first evaluated only its new tokens (prompt-prefix reuse)
    assert all(0 < e.tokens.evaluated < e.tokens.prompt / 4 for e in actions[1:])
