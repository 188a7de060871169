"""Import cycles inside one workspace member: the strongly connected components of its module graph,
and of its folder graph (each folder directly under the member's package, e.g. ``edge/agent/`` with its
subfolders, as one node; a module at the top, e.g. ``edge/app.py``, is a node of its own).

Every import counts, also one under ``if TYPE_CHECKING:`` or inside a function: a cycle hidden that way
is still two modules that each need the other. A package's ``__init__`` re-exporting its own modules is
not a cycle of the design, so edges from a package to modules inside it are left out.

Usage: ``python scripts/import_cycles.py [member ...]`` (default: every member); exit 1 on a cycle.
The lead moves ``cycles(member)`` into tests/unit/test_layout.py.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEMBERS = ("protocol", "sync", "llm", "edge", "hub", "cli", "hardware")


def _modules(member: str) -> dict[str, Path]:
    src = ROOT / member / "src"
    found = {}
    for path in src.rglob("*.py"):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The member's modules that ``module`` imports (a name imported from a package counts as that
    package's submodule when one exists by that name)."""
    out: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node, is_package)
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module and not (is_package and name.startswith(module + ".")):
                out.add(name)
    return out


def _folder(module: str) -> str:
    """``module``'s node in the folder graph: ``edgehub.edge.agent.tools.base`` -> ``edgehub.edge.agent``."""
    return ".".join(module.split(".")[:3])


def graph(member: str, *, folders: bool = False) -> dict[str, set[str]]:
    """``member``'s import graph: module -> the member's modules it imports (or folder -> folders)."""
    known = _modules(member)
    modules = {m: _targets(m, p, known) for m, p in known.items()}
    if not folders:
        return modules
    out: dict[str, set[str]] = {}
    for m, targets in modules.items():
        out.setdefault(_folder(m), set()).update(_folder(t) for t in targets if _folder(t) != _folder(m))
    return out


def cycles(member: str, *, folders: bool = False) -> list[list[str]]:
    """The import cycles of ``member``: each strongly connected component of more than one node."""
    graph_ = graph(member, folders=folders)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph_[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph_):
        if v not in index:
            visit(v)
    return found


def main(members: list[str]) -> int:
    bad = 0
    for member in members or MEMBERS:
        for what, folders in (("modules", False), ("folders", True)):
            for component in cycles(member, folders=folders):
                bad += 1
                print(f"{member}: {what} in a cycle: " + " <-> ".join(component))
    print(f"{bad} cycle(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
