"""Parse a ``run_command`` command line into the simple commands the shell would run.

The policy decides on what a command does, so it needs the words the shell will pass to each program,
not the text the model wrote: ``r''m``, ``"rm"`` and ``\\rm`` are all ``rm``. The text is parsed with
tree-sitter's bash grammar (a maintained, complete bash grammar; a syntax error leaves error nodes,
never an exception) and every simple command anywhere in it (pipelines, ``;``/``&&``/``||`` lists,
subshells, ``{ }`` groups, ``if``/``for``/``while``/``case`` bodies, function bodies) becomes one
``SimpleCommand`` with its words after quote removal.

What cannot be known from the text is not guessed: a word whose value comes from an expansion
(``$x``, ``${x}``, ``$((..))``, brace expansion) is ``None``; command and process substitutions,
here-documents and anything the grammar cannot parse become a ``refusal`` the policy reports as the
``unparsed`` effect.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tree_sitter import Node, Parser

Word = str | None
"""A word after quote removal; ``None`` when its value is only known at run time."""

GLOB = "\x01"
"""Marks an unquoted glob character (``*``, ``?``, ``[``) inside a ``Word`` (quoted ones stay literal)."""

_REFUSED_NODES = {
    "command_substitution": "command substitution",
    "process_substitution": "process substitution",
    "heredoc_redirect": "here-document",
    "heredoc_body": "here-document",
}
_OWNERS = {"command", "declaration_command", "variable_assignments"}
"""Nodes whose assignments are read with them (an assignment elsewhere stands alone)."""
_BRACE_EXPANSION = re.compile(r"\{[^{}]*(,|\.\.)[^{}]*\}")


@dataclass(frozen=True, slots=True)
class Redirect:
    """One redirection of a command's input or output to a file."""

    op: str
    """The operator as written: ``>``, ``>>``, ``<``, ``&>``, ``>|``, ``<>``, ``>&``..."""
    target: Word
    """The file (``None`` when computed at run time)."""

    @property
    def writes(self) -> bool:
        """Whether the redirection opens its target for writing."""
        return self.op != "<" and self.op != "<&"


@dataclass(frozen=True, slots=True)
class SimpleCommand:
    """One program the shell would start (or one bare redirection or assignment)."""

    words: tuple[Word, ...]
    """Command name and arguments after quote removal (empty for a bare ``> file`` or ``X=1``)."""
    assignments: tuple[tuple[str, Word], ...] = ()
    """``NAME=value`` prefixes (and ``export``/``declare`` assignments)."""
    redirects: tuple[Redirect, ...] = ()
    refusal: str = ""
    """Why this part cannot be decided from the text (empty when it can)."""


@dataclass(frozen=True, slots=True)
class ParsedLine:
    """A command line as the shell would run it."""

    commands: tuple[SimpleCommand, ...]
    refusals: tuple[str, ...] = field(default=())
    """Constructs that cannot be decided from the text, once each."""


@cache
def _parser() -> Parser:
    # Imported on first use: daemons that never decide a command never load the grammar.
    import tree_sitter_bash
    from tree_sitter import Language, Parser

    return Parser(Language(tree_sitter_bash.language()))


def parse(line: str) -> ParsedLine:
    """Parse ``line`` as bash would and return its simple commands in order."""
    tree = _parser().parse(line.encode())
    walker = _Walker()
    if tree.root_node.has_error:
        walker.refuse("not valid shell syntax")
    walker.visit(tree.root_node)
    return ParsedLine(tuple(walker.commands), tuple(dict.fromkeys(walker.refusals)))


class _Walker:
    def __init__(self) -> None:
        self.commands: list[SimpleCommand] = []
        self.refusals: list[str] = []

    def refuse(self, why: str) -> None:
        self.refusals.append(why)

    def visit(self, node: Node) -> None:
        if node.type in _REFUSED_NODES:
            self.refuse(_REFUSED_NODES[node.type])
        if node.type == "command":
            self.commands.append(self.command(node, ()))
        elif node.type == "redirected_statement":
            self.redirected(node)
            return
        elif node.type in ("declaration_command", "variable_assignments") or (
            node.type == "variable_assignment" and node.parent is not None and node.parent.type not in _OWNERS
        ):
            self.commands.append(SimpleCommand((), assignments=tuple(self.assignments(node))))
        for child in node.children:
            self.visit(child)

    def redirected(self, node: Node) -> None:
        redirects = tuple(self.redirect(r) for r in node.children_by_field_name("redirect"))
        body = node.child_by_field_name("body")
        if body is not None and body.type == "command":
            self.commands.append(self.command(body, redirects))
            for child in body.children:
                self.visit(child)
        else:
            # A redirected group or loop: its redirections apply to every command inside.
            self.commands.append(SimpleCommand((), redirects=redirects))
            if body is not None:
                self.visit(body)
        for r in node.children_by_field_name("redirect"):
            self.visit(r)

    def command(self, node: Node, outer: tuple[Redirect, ...]) -> SimpleCommand:
        name = node.child_by_field_name("name")
        words: list[Word] = [literal(name)] if name is not None else []
        words += [literal(arg) for arg in node.children_by_field_name("argument")]
        redirects = outer + tuple(self.redirect(r) for r in node.children_by_field_name("redirect"))
        refusal = ""
        if any(not child.is_named for child in node.children_by_field_name("argument")):
            refusal = 'a locale-translated string ($"...")'
        return SimpleCommand(tuple(words), tuple(self.assignments(node)), redirects, refusal)

    def assignments(self, node: Node) -> list[tuple[str, Word]]:
        found = []
        for child in node.children:
            if child.type == "variable_assignment":
                name = child.child_by_field_name("name")
                value = child.child_by_field_name("value")
                key = _text(name) if name is not None else ""
                found.append((key, literal(value) if value is not None else ""))
            elif child.type == "variable_assignments":
                found += self.assignments(child)
        return found

    def redirect(self, node: Node) -> Redirect:
        if node.type == "herestring_redirect":
            return Redirect("<<<", "")
        if node.type == "heredoc_redirect":
            return Redirect("<<", "")
        targets = node.children_by_field_name("destination")
        op = next((_text(c) for c in node.children if not c.is_named), ">")
        if len(targets) != 1:
            # tree-sitter reads `2>&1 cmd args` (a prefix redirection before the command) as one
            # redirection with several targets: the command it swallowed must not pass unseen.
            self.refuse("a redirection before the command name")
            return Redirect(op, None)
        return Redirect(op, literal(targets[0]))


def _text(node: Node) -> str:
    return (node.text or b"").decode(errors="replace")


def literal(node: Node | None) -> Word:
    """The value of a word after quote removal, or ``None`` when an expansion makes it."""
    if node is None:
        return None
    parts = _literal_parts(node)
    if parts is None:
        return None
    value = "".join(text if quoted else _unescape(text) for text, quoted in parts)
    skeleton = "".join("\0" * len(text) if quoted else text for text, quoted in parts)
    if _BRACE_EXPANSION.search(skeleton):
        return None
    if any(c in skeleton for c in "*?["):
        return _mark_globs(parts)
    return value


def _literal_parts(node: Node) -> list[tuple[str, bool]] | None:
    """``(text, quoted)`` pieces of a word; ``None`` when any piece is an expansion."""
    kind = node.type
    if kind == "command_name":
        return _literal_parts(node.children[0]) if node.children else None
    if kind in ("word", "number"):
        return [(_text(node), False)]
    if kind == "raw_string":
        return [(_text(node)[1:-1], True)]
    if kind == "ansi_c_string":
        body = _text(node)[2:-1]
        return None if "\\" in body else [(body, True)]
    if kind == "string":
        pieces: list[tuple[str, bool]] = []
        for child in node.named_children:
            if child.type != "string_content":
                return None
            pieces.append((_unescape_double(_text(child)), True))
        return pieces
    if kind == "concatenation":
        pieces = []
        for child in node.children:
            sub = _literal_parts(child)
            if sub is None:
                return None
            pieces += sub
        return pieces
    return None


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text.replace("\\\n", ""), flags=re.DOTALL)


def _unescape_double(text: str) -> str:
    return re.sub(r"\\([$`\"\\])", r"\1", text.replace("\\\n", ""))


def _mark_globs(parts: list[tuple[str, bool]]) -> str:
    out = []
    for text, quoted in parts:
        if quoted:
            out.append(text)
            continue
        escaped = False
        for ch in text:
            if escaped:
                out.append(ch)
                escaped = False
            elif ch == "\\":
                escaped = True
            else:
                out.append(GLOB + ch if ch in "*?[" else ch)
    return "".join(out)
