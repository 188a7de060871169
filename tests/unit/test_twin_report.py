"""What an edge reports about itself in its twin, beyond version, hardware and load: what the hub's
planner places tasks by (its tools, labels and model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgehub.edge.app import EdgeDaemon
from edgehub.edge.config import EdgeConfig
from edgehub.edge.store.base import Episode
from edgehub.edge.uplink.twin import TWIN_SCHEMA_VERSION, TWINS
from edgehub.llm.fake import FakeBrain
from edgehub.llm.settings import DEFAULT_MODEL_NAME
from edgehub.protocol.v1 import twin_pb2


async def test_the_twin_reports_tools_labels_and_model_for_the_planner(tmp_path: Path) -> None:
    cfg = EdgeConfig.model_validate(
        {
            "device": {"id": "dev-7", "data_dir": str(tmp_path), "labels": {"site": "hall-5"}},
            "tools": {"load_entry_points": False},
            "sandbox": {"mode": "off"},
        }
    )
    brain = FakeBrain(lambda prompt: "{}")
    async with EdgeDaemon(cfg, brain=brain) as daemon:
        report = daemon.report()
    assert {"run_command", "write_file", "finish"} <= set(report.tools)
    assert "knowledge" not in report.tools  # no hub: not offered
    assert dict(report.labels) == {"site": "hall-5"}
    assert report.model == brain.fingerprint
    assert report.model_name == DEFAULT_MODEL_NAME  # the default model's, without loading it
    assert report.draining is False
    profile = report.profile
    assert isinstance(profile, twin_pb2.HardwareProfile)
    assert profile.name, profile  # this machine matches a profile (the generic one at least)
    assert profile.settings.threads >= 1


async def test_the_twin_reports_what_its_memories_are_about_for_data_locality(tmp_path: Path) -> None:
    cfg = EdgeConfig.model_validate(
        {
            "device": {"id": "dev-8", "data_dir": str(tmp_path)},
            "tools": {"load_entry_points": False},
            "sandbox": {"mode": "off"},
        }
    )
    vector = (np.ones(384) / np.sqrt(384)).astype(np.float32)
    texts = ["conveyor belt 3 slipped", "conveyor belt 3 tension adjusted", "the boiler pressure read 4 bar"]
    async with EdgeDaemon(cfg, brain=FakeBrain(lambda prompt: "{}")) as daemon:
        assert daemon.report().memories == []
        episodes = [
            Episode(f"k{i}", "a", t, 1_700_000_000.0 + i, 0.5, i, vector.tobytes())
            for i, t in enumerate(texts)
        ]
        daemon.store.add_episodes(episodes)
        assert daemon.report().memories == []  # recomputed at most once a minute
        daemon.parts.twin._memories_at -= 61
        memories = daemon.report().memories
    assert memories[:2] == ["belt", "conveyor"]  # in two memories each; the rest once
    assert {"boiler", "pressure", "slipped", "tension"} <= set(memories)
    assert "the" not in memories


async def test_the_twin_is_written_as_a_versioned_device_twin_message(tmp_path: Path) -> None:
    cfg = EdgeConfig.model_validate(
        {
            "device": {"id": "dev-9", "data_dir": str(tmp_path)},
            "tools": {"load_entry_points": False},
            "sandbox": {"mode": "off"},
        }
    )
    async with EdgeDaemon(cfg, brain=FakeBrain(lambda prompt: "{}")) as daemon:
        stopped = daemon.parts.twin.twin(twin_pb2.DEVICE_STATE_STOPPED)
    data = TWINS.encode(stopped)
    assert twin_pb2.DeviceTwin.FromString(data).schema_version == TWIN_SCHEMA_VERSION == 1
    read = TWINS.decode(data)
    assert (read.device_id, read.state, read.heartbeat_s) == ("dev-9", twin_pb2.DEVICE_STATE_STOPPED, 5.0)
    assert read.version
    assert read.hardware.cpus >= 1
    assert read.max_concurrent >= 1
