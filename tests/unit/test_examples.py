"""The example configurations in examples/ load as the daemons load them: an example that drifted
from the config schema would greet a new operator with an error."""

from __future__ import annotations

from pathlib import Path

from edgehub.edge.config import load_config as load_edge_config
from edgehub.hub.config import load_config as load_hub_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_the_hub_example_loads_with_the_values_it_shows() -> None:
    cfg = load_hub_config(EXAMPLES / "hub.toml", env={})
    assert cfg.hub.id == "hub-1"
    assert cfg.api.device_addr == "127.0.0.1:7444"
    assert cfg.nats.url is None
    assert cfg.nats.embedded_host == "127.0.0.1"
    assert cfg.metrics.port == 9464


def test_the_edge_example_loads() -> None:
    cfg = load_edge_config(EXAMPLES / "edge.toml", env={})
    assert cfg.device.id
