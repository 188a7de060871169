"""Configuration: TOML, then environment; every mistake names the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgehub.edge.config import load_config
from edgehub.edge.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(text)
    return path


def test_defaults_need_no_file() -> None:
    cfg = load_config(None, env={})
    assert cfg.model.n_batch == 64
    assert cfg.model.temperature == 0.0
    assert cfg.device.id == "local"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[model]\nn_ctx = 1024\n[device]\nid = 'from-file'\n")
    env = {"EDGEHUB_EDGE__MODEL__N_CTX": "4096", "EDGEHUB_EDGE__TOOLS__ENABLED": '["finish"]'}
    cfg = load_config(path, env=env)
    assert (cfg.model.n_ctx, cfg.device.id, cfg.tools.enabled) == (4096, "from-file", ["finish"])


@pytest.mark.parametrize(
    ("text", "env", "key"),
    [
        ("[model]\nn_ctxx = 1\n", {}, "model.n_ctxx"),
        ("[model]\nn_ctx = 'big'\n", {}, "model.n_ctx"),
        ("[model]\nn_ctx = 16\n", {}, "model.n_ctx"),
        ("[device]\nid = 'has spaces'\n", {}, "device.id"),
        ("[agentt]\n", {}, "agentt"),
        ("", {"EDGEHUB_EDGE__AGENT__MAX_STEPS": "-1"}, "agent.max_steps"),
        ("[tracing]\nsample_ratio = 1.5\n", {}, "tracing.sample_ratio"),
        ("", {"EDGEHUB_EDGE__TRACING__SAMPLE_RATIO": "-0.1"}, "tracing.sample_ratio"),
        ("", {"EDGEHUB_EDGE__TRACING__SAMPLE_RATIO": "half"}, "tracing.sample_ratio"),
        ("[tracing]\notlp_endpoint = '127.0.0.1:4317'\n", {}, "tracing.otlp_endpoint"),
        ("[safety]\nsame_calls = 1\n", {}, "safety.same_calls"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env=env)
    assert info.value.key == key
    assert key in str(info.value)
    assert "edge.toml" in str(info.value)


def test_tracing_is_off_by_default_and_the_environment_points_it_at_a_collector() -> None:
    assert load_config(None, env={}).tracing.otlp_endpoint is None
    env = {
        "EDGEHUB_EDGE__TRACING__OTLP_ENDPOINT": "http://127.0.0.1:4317",
        "EDGEHUB_EDGE__TRACING__SAMPLE_RATIO": "0.25",
    }
    tracing = load_config(None, env=env).tracing
    assert (tracing.otlp_endpoint, tracing.sample_ratio, tracing.service_name) == (
        "http://127.0.0.1:4317",
        0.25,
        "edgehub-edge",
    )


def test_invalid_toml_and_missing_file_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[model\n"), env={})
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.toml", env={})
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(None, env={"EDGEHUB_EDGE__TOOLS__ENABLED": "[oops"})


def test_daemons_sharing_a_snapshot_folder_keep_their_images_apart(tmp_path: Path) -> None:
    from edgehub.edge.config import EdgeConfig
    from edgehub.edge.worker import snapshot_dir

    def cfg(device: str, shared: Path | None) -> EdgeConfig:
        snapshot = {"dir": str(shared)} if shared else {}
        return EdgeConfig.model_validate(
            {"device": {"id": device, "data_dir": str(tmp_path / device)}, "snapshot": snapshot}
        )

    shm = tmp_path / "shm"  # a hardware profile's tmpfs, shared by two daemons on one machine
    assert snapshot_dir(cfg("edge-1", shm)) == shm / "edge-1"
    assert snapshot_dir(cfg("edge-2", shm)) == shm / "edge-2"
    assert snapshot_dir(cfg("edge-1", None)) == tmp_path / "edge-1" / "snapshots"


# both daemons load through one loader (edgehub.cli.config): the same rules, the same clear errors --------


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"EDGEHUB_HUB__HUB__ID": ""}, "hub.id"),  # was a raw json.JSONDecodeError
        ({"EDGEHUB_HUB__HUB__ID": "has spaces"}, "hub.id"),
        ({"EDGEHUB_HUB__PLANNER__TICK_S": "soon"}, "planner.tick_s"),
        ({"EDGEHUB_HUB__PLANNER__APPROVE_TOOLS": "[oops"}, "EDGEHUB_HUB__PLANNER__APPROVE_TOOLS"),
        ({"EDGEHUB_HUB__NOPE__X": "1"}, "nope"),
    ],
)
def test_the_hub_reports_bad_environment_overrides_as_config_errors(env: dict[str, str], key: str) -> None:
    from edgehub.hub.config import load_config as load_hub_config
    from edgehub.hub.errors import HubConfigError

    with pytest.raises(HubConfigError) as info:
        load_hub_config(None, env=env)
    assert info.value.key == key
    assert key in str(info.value)


def test_an_empty_edge_override_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"EDGEHUB_EDGE__DEVICE__ID": ""})
    assert info.value.key == "device.id"


def test_a_config_path_that_is_a_folder_is_a_clear_error(tmp_path: Path) -> None:
    from edgehub.hub.config import load_config as load_hub_config
    from edgehub.hub.errors import HubConfigError

    with pytest.raises(ConfigError, match="is a folder"):
        load_config(tmp_path, env={})
    with pytest.raises(HubConfigError, match="is a folder"):
        load_hub_config(tmp_path, env={})


def test_the_pause_threshold_must_be_below_the_resume_threshold(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"pause_free_mb \(2\) must be below resume_free_mb \(2\)"):
        load_config(write(tmp_path, "[store]\npause_free_mb = 2\nresume_free_mb = 2\n"), env={})
    cfg = load_config(write(tmp_path, "[store]\npause_free_mb = 64\nresume_free_mb = 128\n"), env={})
    assert (cfg.store.pause_free_mb, cfg.store.resume_free_mb) == (64, 128)
