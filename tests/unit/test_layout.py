"""The layout is the architecture: protocol <- sync <- {hub, edge}; hub and edge never meet. The brain
(llm) and the hardware profiles stand alone: the daemons use them, they import only the error root.
Inside a member: no import cycles between modules or folders, layers point down, and only the record
store opens a KV bucket."""

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


# inside a member: no cycles, layers point down, one home for KV buckets --------------------------------
def _module_of(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph(member: str) -> dict[str, set[str]]:
    """Module -> the modules of the same member it imports (``TYPE_CHECKING`` imports too: they are
    dependencies of the design all the same). ``from pkg import sub`` is an edge to ``pkg.sub`` only."""
    src = ROOT / member / "src"
    files = {_module_of(p, src): p for p in src.rglob("*.py") if "_pb2" not in p.name}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                target = (
                    ".".join([*base, node.module] if node.module else base) if node.level else node.module
                )
                subs = [f"{target}.{a.name}" for a in node.names]
                targets += subs if all(s in files for s in subs) else [target or "", *subs]
            elif isinstance(node, ast.Import):
                targets += [a.name for a in node.names]
            graph[module] |= {t for t in targets if t in files and t != module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _folder(module: str) -> str:
    """``edgehub.edge.agent.loop`` -> ``edgehub.edge.agent``: the member's folder (or top module)."""
    return ".".join(module.split(".")[:3])


@pytest.mark.parametrize("member", sorted(FORBIDDEN))
def test_no_import_cycles_between_modules_or_folders_of_a_member(member: str) -> None:
    graph = _graph(member)
    folders: dict[str, set[str]] = {}
    for module, targets in graph.items():
        folders.setdefault(_folder(module), set()).update(
            _folder(t) for t in targets if _folder(t) != _folder(module)
        )
    assert not _cycles(graph), f"module cycles in {member}: {_cycles(graph)}"
    assert not _cycles(folders), f"folder cycles in {member}: {_cycles(folders)}"


LAYERS = {
    # a folder or top module may import its own layer and the ones before it, never a later one
    # (``triggerspec`` and ``goaltemplate`` are the ``[[triggers]]`` section and the template language
    # it checks: config, kept apart only for size)
    "edge": [
        ("errors",),
        ("config", "triggerspec", "goaltemplate"),
        ("*",),
        ("parts",),
        ("app",),
        ("cli", "eval"),
    ],
    "hub": [
        ("errors",),
        ("config",),
        ("*",),
        ("services",),
        ("api", "routing"),
        ("app", "metrics"),
        ("cli",),
    ],
    "sync": [("errors",), ("*",)],
    "llm": [("errors",), ("*",)],
}


def _layer(member: str, folder: str) -> int:
    if folder.count(".") < 2:
        return len(LAYERS[member])  # the member's own __init__: it re-exports from every layer
    name = folder.split(".")[2]
    layers = LAYERS[member]
    for i, names in enumerate(layers):
        if name in names:
            return i
    return next(i for i, names in enumerate(layers) if names == ("*",))


@pytest.mark.parametrize("member", sorted(LAYERS))
def test_no_folder_imports_a_higher_layer_of_its_member(member: str) -> None:
    bad = [
        f"{module} imports {target}"
        for module, targets in _graph(member).items()
        for target in targets
        if _layer(member, _folder(target)) > _layer(member, _folder(module))
    ]
    assert not bad, "\n".join(sorted(bad))


KV_HOMES = {ROOT / "sync/src/edgehub/sync/records.py", ROOT / "sync/src/edgehub/sync/streams.py"}


def test_no_module_but_the_record_store_opens_a_kv_bucket() -> None:
    """``sync/records.py`` is the one way to a bucket (``streams.py`` creates them at start-up)."""
    bad = []
    for member in FORBIDDEN:
        for path in (ROOT / member / "src").rglob("*.py"):
            if path in KV_HOMES or "_pb2" in path.name:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Attribute) and node.attr in ("key_value", "create_key_value"):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} calls {node.attr}")
    assert not bad, "\n".join(bad)
