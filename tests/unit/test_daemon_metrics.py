"""What the edge daemon reports at scrape time: the outbox's depth, running agents, events published
only once the hub link has a publisher, and its resident memory by part."""

from __future__ import annotations

import os

from prometheus_client import generate_latest

from edgehub.edge.footprint import measure
from edgehub.edge.metrics import DaemonCollector, EdgeMetrics


def scrape(published: int | None) -> str:
    metrics = EdgeMetrics("dev-1")
    metrics.add_collector(
        DaemonCollector("dev-1", outbox_depth=lambda: 7, running=lambda: 2, published=lambda: published)
    )
    return generate_latest(metrics.registry).decode()


def test_the_daemon_reports_outbox_depth_and_running_agents() -> None:
    text = scrape(None)
    assert 'edgehub_edge_outbox_depth{device="dev-1"} 7.0' in text
    assert 'edgehub_edge_agents_running{device="dev-1"} 2.0' in text
    assert "edgehub_edge_events_published" not in text  # no hub link connected yet


def test_events_published_are_counted_once_the_link_publishes() -> None:
    assert 'edgehub_edge_events_published_total{device="dev-1"} 41.0' in scrape(41)


def test_the_daemon_reports_its_resident_memory_by_part() -> None:
    text = scrape(None)
    lines = {
        line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("edgehub_edge_memory_bytes{")
    }
    parts = [
        f'device="dev-1",part="{p}",process="daemon"' for p in ("embeddings", "model_buffers", "model_file")
    ]
    assert set(lines) == {*parts, 'device="dev-1",part="python",process="daemon"'}
    assert lines['device="dev-1",part="python",process="daemon"'] > 10 * 2**20  # this interpreter at least
    now = measure(os.getpid())  # what the metric reports is this process's split (a full run may map models)
    for part in ("model_buffers", "model_file"):
        assert abs(lines[f'device="dev-1",part="{part}",process="daemon"'] - getattr(now, part)) <= 16 * 2**20
