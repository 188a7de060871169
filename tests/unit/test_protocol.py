"""Generated protobuf code is committed; regenerating it must change nothing."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from edgehub.protocol.v1 import agent_pb2, events_pb2

ROOT = Path(__file__).resolve().parents[2]


def _gen_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_protos"] = module
    spec.loader.exec_module(module)
    return module


def test_regenerating_protos_changes_nothing(tmp_path: Path) -> None:
    written = _gen_module().generate(tmp_path)
    committed = ROOT / "protocol" / "src"
    assert written
    for path in written:
        rel = path.relative_to(tmp_path)
        assert (committed / rel).read_text() == path.read_text(), f"{rel} is stale: run `make gen-protos`"
    generated = {p.relative_to(tmp_path) for p in written}
    on_disk = {p.relative_to(committed) for p in (committed / "edgehub/protocol/v1").iterdir() if p.is_file()}
    assert on_disk == generated, "committed files without a .proto source"


def test_edge_event_round_trips_with_its_step() -> None:
    event = events_pb2.EdgeEvent(schema_version=1, event_id="a/0/3/action", device_id="d1", seq=7)
    event.step.CopyFrom(agent_pb2.StepEvent(agent_id="a", step=3, thought='é ✓ "quoted"'))
    back = events_pb2.EdgeEvent.FromString(event.SerializeToString())
    assert back == event
    assert back.WhichOneof("body") == "step"


def test_unknown_fields_from_a_newer_writer_are_preserved() -> None:
    newer = agent_pb2.AgentState(agent_id="a").SerializeToString() + b"\xa8\x06\x01"  # field 101, varint 1
    state = agent_pb2.AgentState.FromString(newer)
    assert state.agent_id == "a"
    assert state.SerializeToString() == newer
