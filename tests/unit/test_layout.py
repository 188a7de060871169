"""The layout is the architecture: protocol <- sync <- {hub, edge}; hub and edge never meet. The brain
(llm) and the hardware profiles stand alone: the daemons use them, they import no other member."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "protocol": ("edgehub.sync", "edgehub.edge", "edgehub.hub", "edgehub.cli", "edgehub.hardware"),
    "sync": ("edgehub.edge", "edgehub.hub", "edgehub.cli", "edgehub.hardware"),
    "llm": ("edgehub.sync", "edgehub.edge", "edgehub.hub", "edgehub.cli", "edgehub.hardware"),
    "edge": ("edgehub.hub",),
    "hub": ("edgehub.edge",),
    "cli": ("edgehub.edge", "edgehub.hub", "edgehub.hardware"),
    "hardware": (
        "edgehub.protocol.v1",
        "edgehub.sync",
        "edgehub.llm",
        "edgehub.edge",
        "edgehub.hub",
    ),
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("member", sorted(FORBIDDEN))
def test_member_imports_only_what_the_layering_allows(member: str) -> None:
    bad = []
    for path in (ROOT / member / "src").rglob("*.py"):
        for name in _imports(path):
            if name.startswith(FORBIDDEN[member]):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def test_edge_does_not_depend_on_hub_packages() -> None:
    text = (ROOT / "edge" / "pyproject.toml").read_text()
    assert "edgehub-hub" not in text
    assert "neo4j" not in text


def _members(name: str) -> set[str]:
    text = (ROOT / name / "pyproject.toml").read_text()
    deps = text.split("[build-system]")[0].split("dependencies", 1)[1]
    return {line.strip().strip('",') for line in deps.splitlines() if line.strip().startswith('"edgehub-')}


def test_the_brain_depends_on_no_other_member_but_the_error_root() -> None:
    assert _members("llm") == {"edgehub-protocol"}
    assert "neo4j" not in (ROOT / "llm" / "pyproject.toml").read_text()


def test_hardware_profiles_depend_on_no_member_but_the_cli_command_and_the_error_root() -> None:
    assert _members("hardware") == {"edgehub-cli", "edgehub-protocol"}
