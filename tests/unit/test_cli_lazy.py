"""``edgehub --help`` lists every area without importing any: no daemon, no model, no gRPC/NATS/Neo4j
client is imported until a command line names its area (``edgehub.cli.area``). A test on modules,
not on time: the time is bench/footprint's."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points

import pytest
from typer.testing import CliRunner

from edgehub.cli.area import Area
from edgehub.cli.main import GROUP, app

HEAVY = ("llama_cpp", "grpc", "nats", "neo4j", "numpy", "sqlite_vec", "apsw", "pydantic", "cryptography")
APPS = ("edgehub.edge.app", "edgehub.hub.app", "edgehub.edge.cli.daemon", "edgehub.hub.cli.daemon")


def _modules_after(argv: list[str]) -> set[str]:
    """The modules a fresh interpreter holds after running ``edgehub ARGV`` (its exit caught)."""
    script = (
        "import json, sys\n"
        f"sys.argv = ['edgehub', *{argv!r}]\n"
        "from edgehub.cli.main import app\n"
        "try:\n    app()\nexcept SystemExit:\n    pass\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    return set(json.loads(out.stdout.splitlines()[-1]))


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY or m in APPS)


def test_help_imports_no_daemon_model_or_network_client() -> None:
    modules = _modules_after(["--help"])
    assert "edgehub.cli.main" in modules  # the script ran the CLI at all
    assert _heavy(modules) == []


def test_an_area_imports_its_own_member_only() -> None:
    modules = _modules_after(["hardware", "--help"])
    assert "edgehub.hardware.cli" in modules
    descriptors = {
        "edgehub.hub",
        "edgehub.hub.cli",
        "edgehub.hub.cli.areas",
        "edgehub.edge",
        "edgehub.edge.cli",
    }
    others = {m for m in modules if m.startswith(("edgehub.hub", "edgehub.edge"))} - descriptors
    assert others == {"edgehub.edge.cli.areas"}
    assert "grpc" not in modules
    assert "llama_cpp" not in modules


def _areas() -> list[tuple[str, Area]]:
    found = [(ep.name, ep.load()) for ep in entry_points(group=GROUP)]
    # two members may add to one area (`policy`): sorted by name, then by where the app lives
    return sorted(((n, a) for n, a in found if isinstance(a, Area)), key=lambda p: (p[0], p[1].app))


def test_every_member_describes_its_areas() -> None:
    names = {name for name, _ in _areas()}
    assert {"edge", "agent", "hub", "goal", "hardware"} <= names


@pytest.mark.parametrize(("name", "area"), _areas())
def test_each_area_answers_help_with_its_descriptors_line(name: str, area: Area) -> None:
    assert area.load().info.help == area.help  # one source for the line
    result = CliRunner().invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert area.help.split()[0] in result.output


def test_root_help_lists_every_area_with_its_line() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    for name, area in _areas():
        assert name in result.output
        assert area.help.split(":")[0].split()[0] in result.output


def test_an_area_that_fails_to_import_is_left_out_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgehub.cli import main

    monkeypatch.setitem(main._LAZY, "broken", [Area("Nothing here.", "edgehub.no_such_module:app")])
    result = CliRunner().invoke(app, ["broken", "run"])
    assert result.exit_code == 2
    assert "No such command 'broken'" in result.output
    assert CliRunner().invoke(app, ["hardware", "--help"]).exit_code == 0  # the others still work
