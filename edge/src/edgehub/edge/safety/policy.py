"""The policy engine: the model suggests, the platform decides.

A policy is a TOML file operators read and review::

    version = 2

    [[rules]]
    id = "recursive-deletes"
    tools = ["run_command"]
    effect = "needs_approval"
    reason = "deleting a tree needs an operator"
    effects = ["delete+recursive", "outside_workspace"]

    [[rules]]
    id = "fetch-docs"
    tools = ["run_command"]
    effect = "allow"
    args = { command = ["re:^curl "] }
    network = ["docs.example.com:443"]

    [[rules]]
    id = "commands"
    tools = ["run_command"]
    effect = "allow"

Rules are tried in file order and the first whose ``tools`` and ``args`` match decides: ``allow``,
``deny`` or ``needs_approval``. A call no rule matches is denied (rule ``default``). ``tools`` are glob
patterns on the tool name; ``args`` maps an argument name to patterns, all of which names must match
(any one pattern per name): a glob (``fnmatch``, e.g. ``secrets/*``) or, prefixed ``re:``, a regular
expression searched in the value. A rule naming an argument the call does not have does not match.
``effects`` (version 2) matches what a ``command`` argument does rather than how it is spelled: the
command is parsed like bash parses it and each simple command classified (``effects.analyse``); the
rule matches when one simple command has every effect of one entry (``"delete+recursive"``).
Version 1 files (no ``effects``) load unchanged. ``escalate = true`` (version 3) on a rule: a call it
decides is first asked of the hub's model (``[escalation]``, docs/models.md), whose action is then
decided like any other; the rule's ``effect`` still applies to the calls it matches.

The engine re-reads the file when it changes (checked on each decision with one ``stat``), so edits
take effect without restarting the daemon. A broken edit is refused with a logged error and the last
good policy stays in force: a typo never silently opens (or closes) everything.
Nothing the model writes reaches this module except the call under decision: policy is never read
from the agent's context.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import ConfigError
from ..jsontypes import JsonObject
from .effects import EFFECTS, CommandAnalysis, analyse

log = logging.getLogger("edgehub.edge.policy")

Effect = Literal["allow", "deny", "needs_approval"]
POLICY_VERSION = 3
POLICY_VERSIONS = (1, 2, 3)
"""Versions this engine reads: 2 added ``effects``, 3 ``escalate``."""
DEFAULT_POLICY = "default_policy.toml"


class RuleModel(BaseModel):
    """One rule as written in the policy file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
    tools: list[str] = Field(min_length=1)
    effect: Effect
    reason: str = ""
    args: dict[str, list[str]] = {}
    network: list[str] = []
    """Hosts (``host[:port]`` globs) a sandboxed call allowed by this rule may reach."""
    effects: list[str] | None = None
    """What the call's ``command`` does: any one entry, each effect names joined by ``+`` (all of them
    in one simple command); see ``effects.EFFECTS``. Version 2."""
    escalate: bool = False
    """A call this rule decides is first asked of the hub's model (``[escalation]``). Version 3."""

    @field_validator("effects")
    @classmethod
    def _known_effects(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("give at least one effect, or leave effects out")
        for entry in value or []:
            unknown = [name for name in entry.split("+") if name not in EFFECTS]
            if unknown:
                raise ValueError(f"unknown effect {unknown[0]!r} in {entry!r}; known: {', '.join(EFFECTS)}")
        return value

    @field_validator("network")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        for grant in value:
            if not re.fullmatch(r"[A-Za-z0-9*?.\[\]:-]+", grant) or grant.count(":") > 1:
                raise ValueError(f"network: {grant!r} is not a host or host:port pattern")
        return value

    @field_validator("args")
    @classmethod
    def _patterns_compile(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, patterns in value.items():
            if not patterns:
                raise ValueError(f"args.{name}: give at least one pattern")
            for pattern in patterns:
                if pattern.startswith("re:"):
                    try:
                        re.compile(pattern[3:])
                    except re.error as exc:
                        raise ValueError(f"args.{name}: bad regular expression {pattern!r}: {exc}") from None
        return value


class PolicyModel(BaseModel):
    """A policy file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = Field(strict=True)
    rules: list[RuleModel] = []

    @field_validator("version")
    @classmethod
    def _readable(cls, version: int) -> int:
        if version not in POLICY_VERSIONS:
            raise ValueError(
                f"policy version {version} is not one this edgehub reads"
                f" ({', '.join(map(str, POLICY_VERSIONS))});"
                " upgrade edgehub or write the file for a version it reads"
            )
        return version

    @model_validator(mode="after")
    def _effects_need_v2(self) -> PolicyModel:
        for i, rule in enumerate(self.rules):
            if rule.effects is not None and self.version < 2:
                raise ValueError(f"rules.{i}.effects: `effects` needs version = 2")
            if rule.escalate and self.version < 3:
                raise ValueError(f"rules.{i}.escalate: `escalate` needs version = 3")
        return self

    @field_validator("rules")
    @classmethod
    def _unique_ids(cls, rules: list[RuleModel]) -> list[RuleModel]:
        seen: set[str] = set()
        for rule in rules:
            if rule.id in seen:
                raise ValueError(f"rule id {rule.id!r} is used twice")
            seen.add(rule.id)
        return rules


Matcher = Callable[[str], bool]


def _matcher(pattern: str) -> Matcher:
    if pattern.startswith("re:"):
        return re.compile(pattern[3:]).search  # type: ignore[return-value]
    regex = re.compile(fnmatch.translate(pattern))
    return regex.match  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class Rule:
    """A compiled rule."""

    id: str
    effect: Effect
    reason: str
    tools: tuple[Matcher, ...]
    args: tuple[tuple[str, tuple[Matcher, ...]], ...]
    network: tuple[str, ...]
    effects: tuple[frozenset[str], ...] | None
    """Each entry: effects one simple command must all have (``None``: the rule does not look)."""
    source: RuleModel
    """The rule as written (for listings)."""

    @classmethod
    def compile(cls, model: RuleModel) -> Rule:
        return cls(
            model.id,
            model.effect,
            model.reason,
            tuple(_matcher(t) for t in model.tools),
            tuple((name, tuple(_matcher(p) for p in pats)) for name, pats in model.args.items()),
            tuple(model.network) if model.effect != "deny" else (),
            None if model.effects is None else tuple(frozenset(e.split("+")) for e in model.effects),
            model,
        )

    def matches(self, tool: str, args: JsonObject, seen: _Seen) -> bool:
        if not any(m(tool) for m in self.tools):
            return False
        for name, matchers in self.args:
            value = args.get(name)
            if value is None:
                return False
            text = value if isinstance(value, str) else str(value)
            if not any(m(text) for m in matchers):
                return False
        if self.effects is not None:
            analysis = seen.analysis(args)
            hit = next((h for e in self.effects if analysis and (h := analysis.first_match(e))), None)
            if hit is None:
                return False
            seen.matched = hit.describe()
        return True


class _Seen:
    """One decision's command analysis, made once and only if an ``effects`` rule asks."""

    def __init__(self) -> None:
        self._analysis: CommandAnalysis | None = None
        self.matched = ""
        """The simple command (and its effects) that the deciding rule matched."""

    def analysis(self, args: JsonObject) -> CommandAnalysis | None:
        command = args.get("command")
        if not isinstance(command, str):
            return None
        if self._analysis is None:
            self._analysis = analyse(command)
        return self._analysis


@dataclass(frozen=True, slots=True)
class Verdict:
    """The engine's decision on one call."""

    effect: Effect
    rule: str
    """The id of the deciding rule; ``default`` when none matched."""
    reason: str
    digest: str
    """Short digest of the policy text that decided."""
    network: tuple[str, ...] = ()
    """Hosts the call may reach (from the deciding rule's ``network``)."""
    matched: str = ""
    """For an ``effects`` rule: the simple command it matched and that command's effects."""
    version: int = 0
    """The hub bundle's version of the policy that decided (0: the local file or the default)."""
    escalate: bool = False
    """The deciding rule wants the hub's model to choose this call (``RuleModel.escalate``)."""


@dataclass(frozen=True, slots=True)
class Policy:
    """A loaded, compiled policy."""

    rules: tuple[Rule, ...]
    digest: str
    source: str
    sha256: str = ""
    """SHA-256 (hex) of the policy text (``digest`` is its first 12 digits)."""
    version: int = 0
    """The hub bundle's version (0: not from the hub)."""

    @classmethod
    def parse(cls, text: str, *, source: str, version: int = 0) -> Policy:
        """Parse and validate policy text; raise ConfigError naming the bad key."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"not valid TOML: {exc}", path=source) from None
        try:
            model = PolicyModel.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"]) or "(policy)"
            raise ConfigError(f"{key}: {err['msg']}", key=key, path=source) from None
        sha256 = hashlib.sha256(text.encode()).hexdigest()
        return cls(tuple(Rule.compile(r) for r in model.rules), sha256[:12], source, sha256, version)

    def decide(self, tool: str, args: JsonObject) -> Verdict:
        seen = _Seen()
        for rule in self.rules:
            if rule.matches(tool, args, seen):
                reason = f"{rule.reason} ({seen.matched})" if seen.matched else rule.reason
                return Verdict(
                    rule.effect,
                    rule.id,
                    reason,
                    self.digest,
                    rule.network,
                    seen.matched,
                    self.version,
                    rule.source.escalate,
                )
        why = "no rule allows this call (deny by default)"
        return Verdict("deny", "default", why, self.digest, version=self.version)


def default_policy_text() -> str:
    return files("edgehub.edge.safety").joinpath(DEFAULT_POLICY).read_text()


class PolicyEngine:
    """Decides calls against a policy file, re-reading it when it changes; once a bundle from the hub
    is adopted (``adopt``, see ``hubpolicy.py``), against that bundle and no longer the file."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.load_error = ""
        """Why the last edit was refused (empty when the file in force is the file on disk)."""
        self.from_hub = False
        """A hub bundle is in force: the file is not read."""
        self._stamp: tuple[int, int, int] | None = None
        if path is None:
            self.policy = Policy.parse(default_policy_text(), source="(built-in default policy)")
        else:
            self._stamp = self._stat()
            self.policy = Policy.parse(self._read(), source=str(path))

    def _stat(self) -> tuple[int, int, int] | None:
        assert self.path is not None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read(self) -> str:
        assert self.path is not None
        try:
            return self.path.read_text()
        except FileNotFoundError:
            raise ConfigError("policy file not found", path=str(self.path)) from None

    def reload_if_changed(self) -> bool:
        """Re-read the file if it changed; True when a new policy took effect."""
        if self.path is None or self.from_hub:
            return False
        stamp = self._stat()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            policy = Policy.parse(self._read(), source=str(self.path))
        except ConfigError as exc:
            self.load_error = str(exc)
            log.error("policy edit refused, the previous policy stays in force: %s", exc)
            return False
        self.policy, self.load_error = policy, ""
        log.info("policy %s reloaded (digest %s, %d rules)", self.path, policy.digest, len(policy.rules))
        return True

    def adopt(self, policy: Policy) -> None:
        """Put a hub bundle's policy in force, in place of the file (the hub's wins from now on)."""
        self.policy, self.from_hub, self.load_error = policy, True, ""
        log.warning("policy version %d from the hub in force (digest %s, %d rules)",
                    policy.version, policy.digest, len(policy.rules))  # fmt: skip

    @property
    def source(self) -> str:
        """Where the policy in force comes from: ``hub``, ``file`` or ``default``."""
        return "hub" if self.from_hub else "file" if self.path is not None else "default"

    def decide(self, tool: str, args: JsonObject) -> Verdict:
        self.reload_if_changed()
        return self.policy.decide(tool, args)
