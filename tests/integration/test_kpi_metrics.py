"""The operator's KPIs move on real agent runs: a real daemon (real SQLite store, real policy file),
a scripted brain, and /metrics scraped over HTTP the way Prometheus does."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from edgehub.edge.app import EdgeDaemon
from edgehub.edge.config import EdgeConfig
from edgehub.llm.fake import FakeBrain

POLICY = """
version = 1

[[rules]]
id = "no-secrets"
tools = ["write_file"]
effect = "deny"
reason = "not there"
args = { path = ["secret*"] }

[[rules]]
id = "rest"
tools = ["write_file", "read_file", "remember", "recall", "finish"]
effect = "allow"
"""


def act(tool: str, thought: str = "go", **args: object) -> str:
    return json.dumps({"thought": thought, "tool": tool, "args": args})


def config(tmp_path: Path, **agent: object) -> EdgeConfig:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    return EdgeConfig.model_validate(
        {
            "device": {"id": "dev-1", "data_dir": str(tmp_path / "data")},
            "tools": {"load_entry_points": False},
            "safety": {"policy": str(policy), "failing_repeats": 2, "stuck_warnings": 1},
            "metrics": {"port": 0},
            "agent": agent,
        }
    )


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample on /metrics: (name, labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset({"device": "dev-1", **labels}.items())), 0.0)


async def run(daemon: EdgeDaemon, goal: str) -> None:
    daemon.submit(goal)
    await daemon.run(until_idle=True)


async def test_a_denial_a_finish_and_a_budget_stop_each_move_their_metric(tmp_path: Path) -> None:
    script = [
        act("write_file", path="secret.txt", content="x"),  # denied by rule no-secrets
        act("write_file", path="notes.txt", content="fine"),
        act("finish", answer="done"),  # agent 1 finishes
        *[act("remember", key=f"k{i}", value="v") for i in range(5)],  # agent 2: step budget of 4
    ]
    async with EdgeDaemon(config(tmp_path, max_steps=4), brain=FakeBrain(script, n_ctx=2048)) as daemon:
        port = daemon.metrics_port
        assert port is not None
        before = await asyncio.to_thread(scrape, port)
        await run(daemon, "write notes")
        after_one = await asyncio.to_thread(scrape, port)
        await run(daemon, "remember things")
        after_two = await asyncio.to_thread(scrape, port)

    assert value(before, "edgehub_edge_policy_decisions_total", effect="deny", rule="no-secrets") == 0
    assert value(after_one, "edgehub_edge_policy_decisions_total", effect="deny", rule="no-secrets") == 1
    assert value(after_one, "edgehub_edge_policy_decisions_total", effect="allow", rule="rest") == 2
    assert value(after_one, "edgehub_edge_agents_ended_total", outcome="finished") == 1
    assert value(after_one, "edgehub_edge_budget_stops_total", budget="step") == 0
    assert value(after_two, "edgehub_edge_budget_stops_total", budget="step") == 1
    assert value(after_two, "edgehub_edge_agents_ended_total", outcome="failed") == 1
    assert value(after_two, "edgehub_edge_stuck_stops_total") == 0
    # every step that asked the model observed its context pressure and both phases
    assert value(after_two, "edgehub_edge_context_ratio_count") == 7
    assert 0 < value(after_two, "edgehub_edge_context_ratio_sum") < 7
    assert value(after_two, "edgehub_edge_context_ratio_bucket", le="1.0") == 7
    assert value(after_two, "edgehub_edge_step_phase_seconds_count", kind="model") == 7
    assert value(after_two, "edgehub_edge_step_phase_seconds_count", kind="tool") == 7
    free = value(after_two, "edgehub_edge_data_fs_free_bytes")
    assert 0 < free <= value(after_two, "edgehub_edge_data_fs_size_bytes")


async def test_a_stuck_agent_counts_a_warning_then_a_stuck_stop(tmp_path: Path) -> None:
    script = [act("read_file", thought="Read missing.txt.", path="missing.txt")] * 10
    async with EdgeDaemon(config(tmp_path), brain=FakeBrain(script)) as daemon:
        port = daemon.metrics_port
        assert port is not None
        await run(daemon, "read it")
        samples = await asyncio.to_thread(scrape, port)
    assert value(samples, "edgehub_edge_stuck_warnings_total") == 1
    assert value(samples, "edgehub_edge_stuck_stops_total") == 1
    assert value(samples, "edgehub_edge_agents_ended_total", outcome="failed") == 1
    assert value(samples, "edgehub_edge_budget_stops_total", budget="step") == 0
