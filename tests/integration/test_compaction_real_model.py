"""Compaction on the real small model: a grammar-constrained summary, not the fallback."""

from __future__ import annotations

import json

import pytest

from edgehub.edge.memory.compaction import SCHEMA, Compactor, extractive_summary
from edgehub.llm.llama import LlamaBrain
from edgehub.protocol.v1 import agent_pb2

pytestmark = pytest.mark.model

TURNS = [
    agent_pb2.Turn(
        step=0,
        role="action",
        text='{"thought": "save", "tool": "write_file", "args": {"path": "leaf.txt", "content": "green"}}',
    ),
    agent_pb2.Turn(step=0, role="observation", text="wrote 5 characters to leaf.txt"),
    agent_pb2.Turn(
        step=1, role="action", text='{"thought": "read", "tool": "read_file", "args": {"path": "leaf.txt"}}'
    ),
    agent_pb2.Turn(step=1, role="observation", text="green"),
]


def test_the_model_writes_a_valid_summary_for_compaction(brain: LlamaBrain) -> None:
    compactor = Compactor(brain)
    raw = brain.complete(
        compactor.prompt("Report the leaf colour.", "", TURNS), json_schema=SCHEMA, max_tokens=160
    )
    assert json.loads(raw.text)["summary"].strip()
    summary = compactor.summarize("Report the leaf colour.", "", TURNS, max_tokens=160)
    assert summary
    assert summary != extractive_summary("", TURNS)
