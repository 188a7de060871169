"""An evaluation suite: goals in tiers, each with what to set up and how to check its side effects.

A suite is a TOML file (``suites/<name>.toml`` here, or any path) that humans write, so it is
validated with pydantic and every mistake is reported with the goal and the key it is in::

    format = 1                      # the file format (this module); bumped only with a migration
    name = "core"
    revision = 3                    # the suite's own version: bump it when goals or checks change

    [[goals]]
    id = "write-greeting"
    tier = "one_tool"
    goal = "Create greeting.txt holding nothing but the word hello."
    tools = ["write_file"]          # the tools a correct run needs (to categorise failures only)
    ci = true                       # part of the CI-sized subset
    files = { "old.txt" = "..." }   # the workspace before the agent starts
    [[goals.checks]]
    file = "greeting.txt"
    equals = "hello"

Checks judge side effects and the final answer (``checks.py``), never the model's wording and
never its status alone.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import EdgeError

FORMAT = 1
TIERS = (
    "one_tool",
    "two_tools",
    "memory",
    "commands",
    "knowledge",
    "refusals",
    "impossible",
    "unlike",
)
"""Tiers in report order: one tool; two or three tools; memory and recall; commands and their output;
the fleet's knowledge; refusals the policy must produce; impossible goals that must stop cleanly;
goals worded unlike any prompt example."""
Tier = Literal["one_tool", "two_tools", "memory", "commands", "knowledge", "refusals", "impossible", "unlike"]
Status = Literal["finished", "ended_cleanly", "awaiting_approval"]
SUBJECTS = ("file", "answer", "status", "called", "attempted", "not_called", "policy", "note", "max_steps")


class SuiteError(EdgeError):
    """A suite file cannot be read or is not valid (``path``, and the goal when one is at fault)."""

    def __init__(self, message: str, *, path: str, goal: str = "") -> None:
        self.path = path
        self.goal = goal
        where = f" goal {goal!r}:" if goal else ""
        super().__init__(f"suite {path}:{where} {message}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Check(_Strict):
    """One judgement of a run. Exactly one subject key (``file``, ``answer``, ``status``, ``called``,
    ``attempted``, ``not_called``, ``policy``, ``note``, ``max_steps``) says what is judged; the other keys
    say how.
    Text comparisons ignore case and surrounding whitespace."""

    file: str | None = None
    """A workspace path: with ``equals``, ``contains``, ``lacks``, ``lines``, ``exists``, ``unchanged``
    or ``is_dir``."""
    answer: bool | None = None
    """The final answer (empty unless the agent finished): with ``contains``, ``any_of``, ``lacks``."""
    status: Status | None = None
    """``finished``; ``ended_cleanly`` (finished, or ended by the agent itself without a guard or a
    budget stopping it); ``awaiting_approval``."""
    called: str | None = None
    """A tool that must have run successfully (``with``: argument substrings)."""
    attempted: str | None = None
    """A tool the agent must have called, whatever came of it (``with``): trying before giving up."""
    not_called: str | None = None
    """A tool that must not have run successfully (``with``: only calls whose arguments match)."""
    policy: Literal["deny", "needs_approval", "refused"] | None = None
    """A policy decision that must be on record (``refused``: deny or needs_approval)."""
    note: str | None = None
    """An L2 note whose key contains this text (``contains``: in its value)."""
    max_steps: int | None = Field(None, ge=1)
    """The agent used at most this many steps."""

    equals: str | None = None
    contains: list[str] = []
    any_of: list[str] = []
    lacks: list[str] = []
    lines: list[str] | None = None
    exists: bool | None = None
    unchanged: bool | None = None
    is_dir: bool | None = None
    with_: dict[str, str] = Field({}, alias="with")

    @model_validator(mode="after")
    def _one_subject(self) -> Check:
        given = [s for s in SUBJECTS if getattr(self, s) is not None]
        if len(given) != 1:
            raise ValueError(f"a check needs exactly one of {', '.join(SUBJECTS)} (got {given or 'none'})")
        return self

    @property
    def subject(self) -> str:
        return next(s for s in SUBJECTS if getattr(self, s) is not None)

    def describe(self) -> str:
        """A short human-readable form for reports."""
        parts = [f"{k}={v!r}" for k, v in self.model_dump(by_alias=True, exclude_defaults=True).items()]
        return " ".join(parts)


class Memory(_Strict):
    """An L3 memory of an earlier agent on the device, seeded before the goal runs."""

    text: str = Field(min_length=1, max_length=600)
    importance: float = Field(0.8, ge=0, le=1)


class KnownFact(_Strict):
    """What the hub's knowledge graph answered earlier about an entity, in the device's knowledge cache
    (the eval device is offline: the ``knowledge`` tool answers from that cache)."""

    about: list[str] = Field(min_length=1)
    """The questions (entity names) this answer was cached under."""
    entity: str
    facts: list[tuple[str, str, str]] = Field(min_length=1)
    """(subject, predicate, object) triples."""


class Goal(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")
    tier: Tier
    goal: str = Field(min_length=8, max_length=600)
    tools: list[str] = []
    """Tools a correct run needs: used only to categorise a failure (wrong tool, stopped early)."""
    ci: bool = False
    files: dict[str, str] = {}
    """Workspace files before the agent starts (relative path -> text)."""
    before: list[str] = []
    """Goals earlier agents ran on the same device first (unscored): their L3 episodes are there."""
    memories: list[Memory] = []
    knowledge: list[KnownFact] = []
    max_steps: int | None = Field(None, ge=1, le=64)
    checks: list[Check] = Field(min_length=1)

    @model_validator(mode="after")
    def _safe_paths(self) -> Goal:
        for path in [*self.files, *(c.file for c in self.checks if c.file)]:
            if path.startswith("/") or ".." in Path(path).parts:
                raise ValueError(f"path {path!r} must be relative and stay inside the workspace")
        return self


class Suite(_Strict):
    format: int
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")
    revision: int = Field(ge=1)
    max_steps: int = Field(12, ge=1, le=64)
    """Step budget of each goal unless the goal sets its own."""
    goals: list[Goal] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> Suite:
        seen: set[str] = set()
        for g in self.goals:
            if g.id in seen:
                raise ValueError(f"goal id {g.id!r} appears twice")
            seen.add(g.id)
        return self

    def select(
        self, *, ids: Sequence[str] = (), tiers: Sequence[str] = (), ci_only: bool = False
    ) -> list[Goal]:
        """The goals matching every filter given, in file order; unknown ids or tiers are errors."""
        unknown = [i for i in ids if i not in {g.id for g in self.goals}]
        unknown += [t for t in tiers if t not in TIERS]
        if unknown:
            raise SuiteError(f"unknown goal or tier: {', '.join(unknown)}", path=self.name)
        return [
            g
            for g in self.goals
            if (not ids or g.id in ids) and (not tiers or g.tier in tiers) and (g.ci or not ci_only)
        ]


def bundled_suites() -> list[str]:
    """Names of the suites shipped with edgehub."""
    folder = resources.files(__package__).joinpath("suites")
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def _suite_text(name_or_path: str) -> tuple[str, str]:
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        try:
            return path.read_text(), str(path)
        except OSError as exc:
            raise SuiteError(f"cannot read it ({exc.strerror})", path=str(path)) from None
    if name_or_path not in bundled_suites():
        known = ", ".join(bundled_suites())
        raise SuiteError(f"no such suite (bundled: {known}; or give a .toml path)", path=name_or_path)
    res = resources.files(__package__).joinpath("suites").joinpath(f"{name_or_path}.toml")
    return res.read_text(), f"{name_or_path} (bundled)"


def load_suite(name_or_path: str = "core") -> Suite:
    """A bundled suite by name, or a suite file by path; SuiteError says what is wrong and where."""
    text, where = _suite_text(name_or_path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"not valid TOML: {exc}", path=where) from None
    if data.get("format") != FORMAT:
        found = data.get("format")
        raise SuiteError(f"format {found!r} is not supported (this edgehub reads {FORMAT})", path=where)
    try:
        return Suite.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = list(err["loc"])
        goal = ""
        if len(loc) >= 2 and loc[0] == "goals" and isinstance(loc[1], int):
            goals = data.get("goals", [])
            goal = str(goals[loc[1]].get("id", f"#{loc[1] + 1}")) if loc[1] < len(goals) else ""
            loc = loc[2:]
        key = ".".join(str(p) for p in loc) or "(file)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise SuiteError(f"{key}: {err['msg']}{more}", path=where, goal=goal) from None
