"""The hub's ``[retention]`` section: defaults, the stream limits it sets, and what it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
from nats.js.api import DiscardPolicy

from edgehub.hub.config import load_config
from edgehub.hub.errors import HubConfigError
from edgehub.protocol import subjects
from edgehub.sync.streams import StreamLimits, streams


def test_defaults_keep_events_30_days_and_refuse_publishes_at_the_limit_instead_of_dropping() -> None:
    cfg = load_config(env={}).retention
    assert (cfg.events_days, cfg.events_max_mb, cfg.commands_days, cfg.migrations_days) == (30, 4096, 7, 30)
    events, commands, deadletter = streams(cfg.stream_limits())
    assert events.name == subjects.EVENTS_STREAM
    assert (events.max_bytes, events.discard, events.max_age_s) == (4096 * 2**20, DiscardPolicy.NEW, 0.0)
    assert (commands.max_age_s, commands.discard) == (7 * 86400, DiscardPolicy.NEW)
    assert deadletter.discard == DiscardPolicy.OLD  # dead letters are kept for inspection, oldest go first


def test_the_streams_must_fit_in_the_jetstream_store(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    path.write_text(
        "[retention]\nevents_max_mb = 900\ncommands_max_mb = 200\njetstream_max_store_mb = 1000\n"
    )
    with pytest.raises(HubConfigError) as info:
        load_config(path, env={})
    assert "jetstream_max_store_mb" in info.value.message


@pytest.mark.parametrize("key", ["events_days", "events_max_mb", "alarm_ratio"])
def test_a_retention_of_zero_is_refused_naming_the_key(key: str) -> None:
    with pytest.raises(HubConfigError) as info:
        load_config(env={f"EDGEHUB_HUB__RETENTION__{key.upper()}": "0"})
    assert key in info.value.message


def test_stream_limits_default_to_the_configs_defaults() -> None:
    assert load_config(env={}).retention.stream_limits() == StreamLimits()
