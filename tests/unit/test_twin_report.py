"""What an edge reports about itself in its twin, beyond version, hardware and load: what the hub's
planner places tasks by (its tools, labels and model)."""

from __future__ import annotations

from pathlib import Path

from edgehub.edge.app import EdgeDaemon
from edgehub.edge.config import EdgeConfig
from edgehub.llm.fake import FakeBrain


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
    assert {"run_command", "write_file", "finish"} <= set(report["tools"])  # type: ignore[arg-type]
    assert "knowledge" not in report["tools"]  # type: ignore[operator]  # no hub: not offered
    assert report["labels"] == {"site": "hall-5"}
    assert report["model"] == brain.fingerprint
    assert report["draining"] is False
    profile = report["profile"]
    assert isinstance(profile, dict)
    assert profile["name"], profile  # this machine matches a profile (the generic one at least)
    assert profile["settings"]["threads"] >= 1  # type: ignore[index]
