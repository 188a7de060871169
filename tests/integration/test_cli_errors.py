"""Operators' mistakes through the real CLI: bad config, missing or corrupt model; clear errors, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgehub.llm import default_model_path
from tests.harness.cli import edgehub


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[model]\nn_ctx = 'lots'\n", "model.n_ctx"),
        ("[tools]\nenabeld = []\n", "tools.enabeld"),
        ("[model\n", "not valid TOML"),
    ],
)
def test_bad_config_is_reported_with_the_key(tmp_path: Path, toml: str, expected: str) -> None:
    (tmp_path / "edge.toml").write_text(toml)
    for args in (["edge", "config"], ["edge", "run"], ["agent", "run", "--goal", "x"]):
        done = edgehub(*args, "-c", str(tmp_path / "edge.toml"), data_dir=tmp_path / "d")
        assert done.returncode == 2, done.stderr
        assert expected in done.stderr
        assert "Traceback" not in done.stderr


def test_missing_model_file_is_a_clear_error(tmp_path: Path) -> None:
    env = {"EDGEHUB_EDGE__MODEL__PATH": str(tmp_path / "nope.gguf")}
    done = edgehub("agent", "run", "--goal", "x", data_dir=tmp_path / "d", env=env)
    assert done.returncode == 2
    assert "nope.gguf" in done.stderr
    assert "not found" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("kind", ["random", "truncated"])
def test_corrupt_model_file_is_a_clear_error(tmp_path: Path, kind: str) -> None:
    bad = tmp_path / "bad.gguf"
    if kind == "random":
        bad.write_bytes(b"\x00garbage" * 4096)
    else:
        with default_model_path().open("rb") as src, bad.open("wb") as dst:
            dst.write(src.read(1 << 20))  # a real GGUF header, cut after 1 MiB
    done = edgehub(
        "agent", "run", "--goal", "x", data_dir=tmp_path / "d", env={"EDGEHUB_EDGE__MODEL__PATH": str(bad)}
    )
    assert done.returncode == 2, done.stderr[-1500:]
    assert "bad.gguf" in done.stderr
    assert "Traceback" not in done.stderr


def test_second_daemon_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    from edgehub.edge.datadir import DaemonLock

    lock = DaemonLock(tmp_path)
    lock.acquire()
    try:
        assert DaemonLock.held(tmp_path)
        done = edgehub("edge", "run", data_dir=tmp_path)
        assert done.returncode == 2
        assert "another edge daemon" in done.stderr
    finally:
        lock.release()
    assert not DaemonLock.held(tmp_path)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (None, "policy file not found"),
        ("version = 1\n[[rules]]\nid = 'x'\ntools = ['*']\neffect = 'allow-all'\n", "rules.0.effect"),
        ("version = 1\n[[rules]\n", "not valid TOML"),
    ],
)
def test_a_missing_or_broken_policy_stops_the_daemon_with_a_clear_error(
    tmp_path: Path, policy: str | None, expected: str
) -> None:
    path = tmp_path / "policy.toml"
    if policy is not None:
        path.write_text(policy)
    env = {"EDGEHUB_EDGE__SAFETY__POLICY": str(path)}
    for args in (["edge", "run"], ["agent", "run", "--goal", "x"], ["policy", "check"]):
        done = edgehub(*args, data_dir=tmp_path / "d", env=env)
        assert done.returncode == 2, done.stderr
        assert expected in done.stderr
        assert "policy.toml" in done.stderr
        assert "Traceback" not in done.stderr


def test_policy_try_shows_the_deciding_rule(tmp_path: Path) -> None:
    allowed = edgehub("policy", "try", "run_command", '{"command": "ls"}', data_dir=tmp_path)
    assert allowed.returncode == 0
    assert "allow (rule sandboxed-commands)" in allowed.stdout
    held = edgehub("policy", "try", "run_command", '{"command": "rm -rf data"}', data_dir=tmp_path)
    assert held.returncode == 1
    assert "needs_approval (rule destructive-commands)" in held.stdout
    bad = edgehub("policy", "try", "run_command", "{oops", data_dir=tmp_path)
    assert bad.returncode == 2
    assert "not valid JSON" in bad.stderr
