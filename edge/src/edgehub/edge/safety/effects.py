"""What a ``run_command`` command line does: effects of each simple command, from its parsed words.

``analyse("env X=1 \\\\rm --rec -- ../a")`` sees ``rm`` (wrappers unwrapped, quotes and escapes
removed, path to the program dropped) with a recursive option (``-r``, ``-R``, ``--recursive`` or any
unambiguous prefix of it, alone or in a cluster like ``-fr``, anywhere before ``--``) on a path that
leaves the workspace: ``delete``, ``recursive``, ``outside_workspace``. Policy rules match those
effects (``policy.RuleModel.effects``); the effect names and their meaning are ``EFFECTS``.

Paths are judged as the sandbox sees them: the workspace is ``/workspace`` and the command starts
there; ``cd`` moves later relative paths (every directory a ``cd`` may have reached counts, so a
subshell's ``cd`` never hides a path); ``~`` is outside; a glob is judged by its literal text, and a
glob component that could match ``..`` leaves the workspace. The command tables below are the
classifier's knowledge: a program not named in them gets only the effects its paths and
redirections show.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from . import commands as c
from .shell import GLOB, Redirect, SimpleCommand, Word, parse

EFFECTS: dict[str, str] = {
    "delete": "removes files (rm, rmdir, unlink, shred, find -delete, git clean, rsync --delete)",
    "recursive": "acts on a whole directory tree (rm -r, chmod -R, cp -r, find, ...)",
    "permissions": "changes permissions, ownership or attributes (chmod, chown, chgrp, setfacl, chattr)",
    "glob": "names files by a glob pattern",
    "write": "writes or truncates a file (redirection, tee, cp, mv, touch, sed -i, ...)",
    "outside_workspace": "names a path outside the workspace (absolute, ~, .. or after cd)",
    "network": "reaches the network (curl, wget, ssh, git clone/push, pip install, ...)",
    "system": "controls processes or the system (kill, shutdown, mount, sudo, systemctl, date -s, ...)",
    "disk": "raw disk or erase tools (dd, mkfs, shred, wipefs, fdisk, ...)",
    "code": "runs interpreter code (python3 -c, perl -e, awk, a script) the policy does not see into",
    "indirect": "runs commands the policy cannot see (sh -c, eval, source, xargs, trap, alias, ...)",
    "unparsed": "cannot be decided from the text (substitution, here-document, $variable, bad syntax)",
}

WORKSPACE = "/workspace"
_MAX_CWDS = 16


@dataclass(frozen=True, slots=True)
class CommandEffects:
    """The effects of one simple command."""

    name: str
    """The program after unwrapping (``rm`` for ``sudo /bin/rm``); ``(line)`` for the whole line."""
    effects: frozenset[str]
    why: tuple[str, ...] = ()
    """What could not be decided, in words (for ``unparsed``)."""

    def describe(self) -> str:
        atoms = "+".join(sorted(self.effects)) or "-"
        return f"{self.name}: {atoms}" + (f" ({'; '.join(self.why)})" if self.why else "")


@dataclass(frozen=True, slots=True)
class CommandAnalysis:
    """Every simple command of a line with its effects."""

    commands: tuple[CommandEffects, ...]

    def first_match(self, wanted: frozenset[str]) -> CommandEffects | None:
        """The first command that has all of ``wanted``."""
        return next((cmd for cmd in self.commands if wanted <= cmd.effects), None)

    @property
    def effects(self) -> frozenset[str]:
        return frozenset().union(*(cmd.effects for cmd in self.commands))

    def describe(self) -> str:
        return "; ".join(cmd.describe() for cmd in self.commands) or "(no command)"


def analyse(line: str) -> CommandAnalysis:
    """Parse ``line`` and classify every simple command in it."""
    parsed = parse(line)
    found = [CommandEffects("(line)", frozenset({"unparsed"}), parsed.refusals)] if parsed.refusals else []
    classifier = _Classifier()
    found += [classifier.classify(cmd) for cmd in parsed.commands]
    return CommandAnalysis(tuple(found))


class _Classifier:
    def __init__(self) -> None:
        self.cwds: set[str | None] = {WORKSPACE}
        """Every directory the command may be in by now (``None``: unknown)."""

    def classify(self, cmd: SimpleCommand) -> CommandEffects:
        fx: set[str] = set()
        why: list[str] = [cmd.refusal] if cmd.refusal else []
        for name, _value in cmd.assignments:
            if name in c.LOADER_VARIABLES:
                fx.add("indirect")
                why.append(f"sets {name}")
        for redirect in cmd.redirects:
            self.redirect(redirect, fx)
        name, args = self.unwrap(list(cmd.words), fx, why)
        if name:
            self.program(name, args, fx, why)
        if why:
            fx.add("unparsed")
        shown = name or ("(unknown)" if cmd.words else "(assignment)" if cmd.assignments else "(redirection)")
        return CommandEffects(shown, frozenset(fx), tuple(why))

    def unwrap(self, words: list[Word], fx: set[str], why: list[str]) -> tuple[str, list[Word]]:
        """Strip wrappers (``env``, ``nice``, ``sudo``, ``busybox``...) down to the program they run."""
        while words:
            head = words[0]
            if head is None or GLOB in head:
                why.append("the command name is known only at run time")
                return "", []
            name = posixpath.basename(head) or head
            if name in c.LOOKUPS and len(words) > 1 and words[1] in ("-v", "-V"):
                return name, []
            wrapper = c.WRAPPERS.get(name)
            if wrapper is None:
                return name, words[1:]
            fx.update(wrapper.effects)
            rest = _skip_options(words[1:], wrapper, fx, why)
            if rest is None:
                return name, []
            words = rest
        return "", []

    def program(self, name: str, args: list[Word], fx: set[str], why: list[str]) -> None:
        spec = c.spec_for(name)
        opts = _Options.parse(args, spec)
        fx.update(spec.effects)
        if spec.classify is not None:
            spec.classify(opts, fx)
        if name == "find":
            self.find(args, fx, why)
            return
        if name in c.SHELLS and not args:
            fx.add("indirect")  # reads commands from stdin
        if name in ("cd", "pushd"):
            self.cd(opts.operands, fx)
        if spec.pure:
            return
        for word in opts.operands + opts.values:
            if word is None:
                why.append(f"{name}: an argument is known only at run time")
            else:
                self.path(word, fx)

    def find(self, args: list[Word], fx: set[str], why: list[str]) -> None:
        fx.add("recursive")
        i = 0
        while i < len(args) and not _is_find_expr(args[i]):
            self.path(args[i] or "", fx)
            i += 1
        while i < len(args):
            word = args[i]
            i += 1
            if word is None:
                why.append("find: an argument is known only at run time")
            elif word == "-delete":
                fx.add("delete")
            elif word in c.FIND_WRITES and i < len(args):
                fx.add("write")
                self.path(args[i] or "", fx)
            elif word in c.FIND_EXECS:
                end = next((j for j in range(i, len(args)) if args[j] in (";", "+")), len(args))
                inner = self.classify(SimpleCommand(tuple(args[i:end])))
                fx.update(inner.effects)
                why.extend(inner.why)
                i = end + 1

    def cd(self, operands: list[Word], fx: set[str]) -> None:
        target = operands[0] if operands else "~"
        if target is None or target.startswith("~") or GLOB in target:
            self.cwds.add(None)
            return
        if target == "-":
            return  # back to a directory already in self.cwds
        self.cwds |= {_join(cwd, target) for cwd in self.cwds}
        if len(self.cwds) > _MAX_CWDS:
            self.cwds = {None}

    def redirect(self, r: Redirect, fx: set[str]) -> None:
        if r.op in ("<<<", "<<"):
            return
        if r.target is None:
            fx.add("unparsed")
            return
        if r.op in (">&", "<&", "&>") and re.fullmatch(r"\d+-?|-", r.target):
            return  # 2>&1, >&-: descriptors, not files
        if r.writes and r.target not in c.HARMLESS_DEVICES:
            fx.add("write")
        self.path(r.target, fx)

    def path(self, word: str, fx: set[str]) -> None:
        """Add ``outside_workspace``/``glob`` for a word used as a path (``key=value``: its value too)."""
        for text in _path_candidates(word):
            if GLOB in text:
                fx.add("glob")
            if not self.inside(text):
                fx.add("outside_workspace")

    def inside(self, text: str) -> bool:
        literal = text.replace(GLOB, "")
        if literal in c.HARMLESS_DEVICES or re.fullmatch(r"/dev/fd/\d+", literal):
            return True
        if literal.startswith("~"):
            return False
        parts = text.split("/")
        if any(
            GLOB in p and p.startswith(".") and fnmatch.fnmatchcase("..", p.replace(GLOB, "")) for p in parts
        ):
            return False  # `.*` can name the parent directory
        for cwd in self.cwds:
            if cwd is None and not literal.startswith("/"):
                return False
            resolved = _join(cwd or "/", literal)
            if resolved != WORKSPACE and not resolved.startswith(WORKSPACE + "/"):
                return False
        return True


def _join(cwd: str | None, path: str) -> str:
    return posixpath.normpath(posixpath.join(cwd or "/", path)).replace("//", "/")


def _path_candidates(word: str) -> list[str]:
    if word in ("", "-"):
        return []
    found = [word]
    if word.startswith("-") and not word.startswith("--"):
        found = []  # a short option cluster: only an attached path counts (-o/etc/x)
    _key, eq, value = word.partition("=")
    if eq and value:
        found.append(value)
    attached = re.search(r"[/~]", word)
    if word.startswith("-") and attached and not eq:
        found.append(word[attached.start() :])
    return found


def _is_find_expr(word: Word) -> bool:
    return word is None or word.startswith("-") or word in ("(", ")", "!", ",")


def _skip_options(words: list[Word], wrapper: c.Wrapper, fx: set[str], why: list[str]) -> list[Word] | None:
    """The words after a wrapper's own options and operands (``None``: it runs no visible command)."""
    i = 0
    while i < len(words):
        word = words[i]
        if word is None:
            why.append("a wrapper's argument is known only at run time")
            return None
        if word == "--":
            i += 1
            break
        if wrapper.assignments and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", word):
            if word.split("=", 1)[0] in c.LOADER_VARIABLES:
                fx.add("indirect")
                why.append(f"sets {word.split('=', 1)[0]}")
            i += 1
            continue
        if not word.startswith("-") or word == "-":
            break
        flag = word.split("=", 1)[0]
        if flag in wrapper.opaque:
            fx.add("indirect")
            return None
        i += 2 if (flag in wrapper.with_arg and "=" not in word) else 1
    i += wrapper.operands
    return words[i:] if i < len(words) else None


@dataclass(frozen=True, slots=True)
class _Options:
    """A program's arguments split GNU-style: options anywhere before ``--``, then operands."""

    short: frozenset[str]
    long: frozenset[str]
    operands: list[Word]
    values: list[Word]
    """Option values (``-o FILE``, ``--output=FILE``): judged as paths like operands."""

    @classmethod
    def parse(cls, args: Sequence[Word], spec: c.Spec) -> _Options:
        short: set[str] = set()
        long: set[str] = set()
        operands: list[Word] = []
        values: list[Word] = []
        it = iter(args)
        for word in it:
            if word is None or word == "-" or not word.startswith("-") or spec.no_options:
                operands.append(word)
            elif word == "--":
                operands += list(it)
            elif word.startswith("--"):
                name, eq, value = word[2:].partition("=")
                long.update(_expand_long(name, spec.long))
                values += [value] if eq else []
            else:
                values += _short_cluster(word[1:], spec, short, it)
        return cls(frozenset(short), frozenset(long), operands, values)


def _expand_long(name: str, known: Iterable[str]) -> set[str]:
    """GNU getopt accepts any unambiguous prefix (``--rec``); an ambiguous one counts as all it could be."""
    if name in known:
        return {name}
    matches = {k for k in known if k.startswith(name)} if name else set()
    return matches or {name}


def _short_cluster(letters: str, spec: c.Spec, short: set[str], rest: Iterable[Word]) -> list[Word]:
    for j, letter in enumerate(letters):
        short.add(letter)
        if letter in spec.short_with_arg:
            value = letters[j + 1 :]
            return [value] if value else [next(iter(rest), "")]
    return []
