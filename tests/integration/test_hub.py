"""The hub daemon as a subprocess with its embedded nats-server, and an edge daemon reporting to it:
the agent appears in the fleet registry with its device and final status; SIGTERM stops the hub."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from edgehub.edge.app import EdgeDaemon
from edgehub.edge.config import EdgeConfig
from edgehub.edge.llm.fake import FakeBrain
from tests.harness.hub import EDGEHUB, start_hub
from tests.harness.wait import assert_eventually, eventually


def act(tool: str, **args: object) -> str:
    return json.dumps({"thought": "go", "tool": tool, "args": args})


def agents(url: str) -> list[dict[str, object]]:
    done = subprocess.run(
        [*EDGEHUB, "hub", "agents", "--nats", url, "--json"], capture_output=True, text=True
    )
    return [json.loads(line) for line in done.stdout.splitlines()] if done.returncode == 0 else []


async def test_an_edge_agent_appears_in_the_hub_registry(tmp_path: Path) -> None:
    hub, url = start_hub(tmp_path)
    try:
        assert_eventually(lambda: (tmp_path / "nats" / "nats.conf").exists(), timeout=30)
        cfg = EdgeConfig.model_validate(
            {
                "device": {"id": "pi-kitchen", "data_dir": str(tmp_path / "edge")},
                "tools": {"load_entry_points": False},
                "hub": {"nats_url": url},
            }
        )
        script = [act("write_file", path="a.txt", content="x"), act("finish", answer="done")]
        async with EdgeDaemon(cfg, brain=FakeBrain(script)) as edge:
            agent_id = edge.submit("write a file")
            await edge.run(until_idle=True)
        records = await eventually(
            lambda: [r for r in agents(url) if r["agent_id"] == agent_id and r["status"] == "finished"],
            within=60,
        )
        assert records[0]["device_id"] == "pi-kitchen"
        assert records[0]["step"] == 1
    finally:
        hub.send_signal(signal.SIGTERM)
        _, stderr = hub.communicate(timeout=30)
    assert hub.returncode == 0, stderr[-2000:]
    assert "listening for edges" in stderr
