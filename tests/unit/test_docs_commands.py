"""The docs name only commands that exist: every ``edgehub ...`` command in README.md, CHANGELOG.md,
docs/*.md and the members' READMEs is looked up in the real CLI and answers ``--help``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from edgehub.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted(
    [ROOT / "README.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").glob("*.md"), *ROOT.glob("*/README.md")]
)
INLINE = re.compile(r"`((?:uv run --no-sync )?edgehub [^`]+)`")
WORD = re.compile(r"^[a-z][a-z0-9-]*(\|[a-z][a-z0-9-]*)*$")


def _mentions(text: str) -> list[str]:
    """Command lines: inline code and lines of fenced blocks that start with the command."""
    found = [m.group(1) for m in INLINE.finditer(text)]
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        s = line.strip().removeprefix("$ ").removeprefix("uv run --no-sync ")
        if fenced and s.startswith("edgehub "):
            found.append(s)
    return found


def _segments(command: str) -> list[list[str]]:
    """``edgehub a b | c d`` names ``a b`` and ``c d``; words only (arguments and options end one)."""
    command = command.split("#", 1)[0].removeprefix("uv run --no-sync ").removeprefix("edgehub ")
    out = []
    for segment in command.split(" | "):
        words = []
        for token in segment.split():
            if not WORD.match(token):
                break
            words.append(token)
        out.append(words)
    return out


def _paths(command: str, root: Any) -> list[tuple[str, ...]]:
    """The command paths a mention names (a|b alternatives expanded); raises on a missing command."""
    paths = []
    for i, words in enumerate(_segments(command)):
        if not words and not i:
            paths.append(())  # `edgehub --help`: the root itself
            continue
        if not words or (i and words[0] not in root.commands):
            continue  # `a | b` where b is an argument, not another command
        frontier: list[tuple[tuple[str, ...], Any]] = [((), root)]
        for word in words:
            nxt = []
            for path, node in frontier:
                if not hasattr(node, "commands"):  # typer carries its own click: duck-typed
                    nxt.append((path, node))  # a leaf: what follows are its arguments
                    continue
                for alt in word.split("|"):
                    sub = node.commands.get(alt)
                    assert sub is not None, f"`edgehub {' '.join(path)}` has no command {alt!r}"
                    nxt.append(((*path, alt), sub))
            frontier = nxt
        paths.extend(path for path, _ in frontier)
    return paths


def _mentioned() -> list[tuple[str, str]]:
    return [(f"{doc.relative_to(ROOT)}", m) for doc in DOCS for m in _mentions(doc.read_text())]


def test_the_docs_name_commands_at_all() -> None:
    assert len(_mentioned()) > 30  # the scanner works: README and docs show many commands


@pytest.mark.parametrize(("doc", "command"), _mentioned())
def test_every_command_the_docs_name_exists_and_answers_help(doc: str, command: str) -> None:
    root = typer.main.get_command(app)
    for area in root.list_commands(typer.Context(root)):  # type: ignore[attr-defined]
        root.load(area)  # type: ignore[attr-defined]  # the root mounts an area when it is named
    paths = _paths(command, root)
    assert paths, f"{doc}: `{command}` names no command"
    for path in paths:
        result = CliRunner().invoke(app, [*path, "--help"])
        assert result.exit_code == 0, f"{doc}: `edgehub {' '.join(path)} --help`: {result.output}"


# and only files that exist ---------------------------------------------------------------------------------
PATH_MENTION = re.compile(r"`([a-z0-9_.-][A-Za-z0-9_./-]*/)?([a-z0-9_-]+\.(?:py|proto|toml|sh))`")
ELSEWHERE = {"rpc_pb2.py"}
"""Files the docs name that are built outside the repository (CRIU's RPC bindings, in the cache)."""
TRACKED = sorted(
    str(p.relative_to(ROOT))
    for p in ROOT.rglob("*")
    if p.is_file()
    and not {".venv", ".git", "node_modules"} & set(p.parts)
    and p.suffix in (".py", ".proto", ".toml", ".sh")
)


def _file_mentions() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        if doc.name == "CHANGELOG.md":
            continue  # history names files as they were then
        for m in PATH_MENTION.finditer(doc.read_text()):
            if m.group(2) not in ELSEWHERE:
                out.append((f"{doc.relative_to(ROOT)}", (m.group(1) or "") + m.group(2)))
    return sorted(set(out))


@pytest.mark.parametrize(("doc", "path"), _file_mentions())
def test_every_file_the_docs_name_exists(doc: str, path: str) -> None:
    """A path is named from the repository root, a member's folder or its package (``hub/access.py``
    means ``hub/src/edgehub/hub/access.py``): some tracked file must end with it."""
    assert any(t == path or t.endswith("/" + path) for t in TRACKED), (
        f"{doc} names {path}, which does not exist"
    )
