"""L1 window selection and compaction decisions."""

from __future__ import annotations

from edgehub.edge.memory import Compactor, extractive_summary, steps_to_compact
from edgehub.llm.fake import FakeBrain
from edgehub.protocol.v1 import agent_pb2

S = agent_pb2


def turns(*tokens_per_step: int) -> list[agent_pb2.Turn]:
    out = []
    for step, tokens in enumerate(tokens_per_step):
        out.append(S.Turn(step=step, role="action", text=f"a{step}", tokens=tokens // 2))
        out.append(S.Turn(step=step, role="observation", text=f"o{step}", tokens=tokens - tokens // 2))
    return out


def test_nothing_is_compacted_while_everything_fits() -> None:
    assert steps_to_compact(turns(10, 10, 10), budget_tokens=30) == 0


def test_oldest_steps_are_folded_until_the_rest_fits() -> None:
    assert steps_to_compact(turns(10, 10, 10, 10, 10), budget_tokens=25) == 3


def test_the_last_steps_are_always_kept_verbatim() -> None:
    assert steps_to_compact(turns(100, 100, 100), budget_tokens=10, keep=2) == 1


def test_compactor_uses_the_models_summary() -> None:
    brain = FakeBrain(['{"summary": "wrote green to leaf.txt"}'])
    summary = Compactor(brain).summarize("goal", "", turns(4, 4), max_tokens=64)
    assert summary == "wrote green to leaf.txt"
    assert brain.schemas[0] is not None
    assert "summary" in brain.schemas[0]["properties"]


def test_compactor_falls_back_to_an_extractive_summary_on_bad_output() -> None:
    old = turns(4, 4)
    for bad in ['{"summary": "cut off', '{"other": 1}', "[]", '{"summary": ""}']:
        summary = Compactor(FakeBrain([bad])).summarize("goal", "before", old, max_tokens=64)
        assert summary == extractive_summary("before", old)
        assert summary.startswith("before; step 1 action: a0")
