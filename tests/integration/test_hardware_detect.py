"""``edgehub hardware`` through the real CLI on this machine: what it prints agrees with /proc, and a broken
profile file stops it with a clear error."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from edgehub.hardware import BUILTIN_PROFILES, detect, load_profiles, match, mismatches
from tests.harness.cli import edgehub


def test_detect_prints_a_profile_and_settings_consistent_with_proc(tmp_path: Path) -> None:
    done = edgehub("hardware", "detect", "--json", data_dir=tmp_path)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    machine, settings = out["machine"], out["settings"]

    cpuinfo = Path("/proc/cpuinfo").read_text()
    assert machine["arch"] == platform.machine()
    assert machine["cores"] == sum(line.startswith("processor") for line in cpuinfo.splitlines())
    assert 1 <= machine["usable_cores"] <= len(os.sched_getaffinity(0))
    mem_kb = int(
        next(line for line in Path("/proc/meminfo").read_text().splitlines() if "MemTotal" in line).split()[1]
    )
    assert machine["memory_mb"] == mem_kb // 1024

    profiles = {p.name: p for p in load_profiles()}
    profile = profiles[out["profile"]["name"]]
    assert Path(out["profile"]["file"]) == BUILTIN_PROFILES / f"{profile.name}.toml"
    assert not mismatches(detect(), profile.match)
    assert profile.name == match(detect(), list(profiles.values())).name
    assert settings["profile"] == profile.name
    assert 1 <= settings["threads"] <= min(machine["usable_cores"], profile.runtime.threads)
    assert settings["n_ctx"] == profile.runtime.n_ctx

    table = edgehub("hardware", "detect", data_dir=tmp_path)
    assert table.returncode == 0, table.stderr
    assert profile.name in table.stdout


def test_a_broken_profile_file_is_a_clear_error_with_exit_code_2(tmp_path: Path) -> None:
    folder = tmp_path / "profiles"
    folder.mkdir()
    text = (BUILTIN_PROFILES / "generic.toml").read_text().replace("threads = 2", 'threads = "two"')
    (folder / "generic.toml").write_text(text)
    for command in ("detect", "profiles"):
        done = edgehub("hardware", command, "--profiles", str(folder), data_dir=tmp_path)
        assert done.returncode == 2, done.stdout
        assert "generic.toml" in done.stderr
        assert "runtime.threads" in done.stderr
        assert "Traceback" not in done.stderr


def test_schema_and_profiles_commands_print_json(tmp_path: Path) -> None:
    schema = edgehub("hardware", "schema", data_dir=tmp_path)
    assert schema.returncode == 0
    assert "runtime" in json.loads(schema.stdout)["properties"]
    listed = edgehub("hardware", "profiles", "--json", data_dir=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["generic"]["matches"] is True
