"""What the edge daemon reports at scrape time: the outbox's depth, running agents, and events published
only once the hub link has a publisher."""

from __future__ import annotations

from prometheus_client import generate_latest

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
