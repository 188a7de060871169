"""Operator scopes (issue 17): which devices an API token reaches, and the checks the API makes with
them (``ScopeGuard``).

A token without a scope reaches the whole fleet, as every token did before scopes. A scoped token
reaches a device when the scope names the device's id, or when the labels the *hub* assigned to the
device carry every label of one of the scope's selectors. The hub assigns labels with the device's
enrollment token (``edgehub devices enroll-token DEV --label site=plant-a``) and an admin changes them
(``edgehub devices label``); they are kept in the device's credentials record (``identity.py``). The
labels a device reports in its twin are its own claim and never count: a compromised device can write
any label there. A device the hub assigned no labels is reached only by tokens without a scope and by
scopes that name its id.

``Scope.within`` compares two scopes by what they say, not by today's labels (a selector covers the
devices labelled so tomorrow too): a scoped admin may hand out only scopes within its own, never none.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from edgehub.protocol.errors import ErrorCode
from edgehub.protocol.ids import check_device_id, check_id
from edgehub.protocol.v1 import hub_pb2, scope_pb2

from ..errors import OutOfScope, Refused
from .agents import AgentRegistry

MAX_LABELS = 16
"""Labels the hub assigns a device, and labels in one selector."""
LABEL_MAX = 64
"""Characters of a label's key or value (each an id)."""
MAX_SELECTORS = 16
MAX_SCOPE_DEVICES = 256

Selector = frozenset[tuple[str, str]]


def _invalid(message: str) -> Refused:
    return Refused(ErrorCode.INVALID_ARGUMENT, message)


def check_labels(labels: Mapping[str, str], field: str = "labels") -> dict[str, str]:
    """``labels`` when there are at most ``MAX_LABELS`` and each key and value is an id (at most
    ``LABEL_MAX`` characters), else ``InvalidId``/``Refused`` (INVALID_ARGUMENT) naming ``field``."""
    if len(labels) > MAX_LABELS:
        raise _invalid(f"{field}: {len(labels)} labels, at most {MAX_LABELS}")
    for key, value in labels.items():
        check_id(key, f"{field} key", max_len=LABEL_MAX)
        check_id(value, f"{field} {key}", max_len=LABEL_MAX)
    return dict(labels)


def parse_labels(texts: Iterable[str], field: str = "label") -> dict[str, str]:
    """``["site=plant-a", "line=3,zone=b"]`` -> their labels (checked: ``check_labels``)."""
    out: dict[str, str] = {}
    for text in texts:
        for pair in text.split(","):
            key, sep, value = pair.strip().partition("=")
            if not sep:
                raise _invalid(f"{field}: {pair.strip()[:40]!r} is not KEY=VALUE")
            out[key.strip()] = value.strip()
    return check_labels(out, field)


def describe_labels(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


@dataclass(frozen=True, slots=True)
class Scope:
    """The devices a token reaches (see the module docstring); empty: the whole fleet."""

    selectors: frozenset[Selector] = frozenset()
    """A device whose hub-assigned labels carry every label of one of these is in scope."""
    devices: frozenset[str] = frozenset()
    """Devices in scope by id, whatever their labels."""

    @property
    def fleet_wide(self) -> bool:
        """No scope: every device, and the fleet-wide methods (Consolidate)."""
        return not self.selectors and not self.devices

    def covers(self, device_id: str, labels: Mapping[str, str]) -> bool:
        """``device_id``, with the labels the hub assigned it, is in this scope."""
        if self.fleet_wide or device_id in self.devices:
            return True
        return any(all(labels.get(k) == v for k, v in selector) for selector in self.selectors)

    def within(self, other: Scope) -> bool:
        """Every device this scope could ever reach, ``other`` reaches too: ``other`` is the whole fleet,
        or this one is scoped, names only devices ``other`` names, and each of its selectors asks for
        every label of one of ``other``'s (so it selects fewer devices, whatever their labels)."""
        if other.fleet_wide:
            return True
        if self.fleet_wide or not self.devices <= other.devices:
            return False
        return all(any(theirs <= mine for theirs in other.selectors) for mine in self.selectors)

    def __str__(self) -> str:
        if self.fleet_wide:
            return "the whole fleet"
        parts = sorted(describe_labels(dict(s)) for s in self.selectors)
        if self.devices:
            parts.append("devices " + ",".join(sorted(self.devices)))
        return "; ".join(parts)

    @classmethod
    def from_proto(cls, pb: scope_pb2.Scope) -> Scope:
        """A stored scope (checked when it was given: ``checked``)."""
        return cls(
            frozenset(frozenset(s.labels.items()) for s in pb.selectors if s.labels), frozenset(pb.devices)
        )

    @classmethod
    def checked(cls, pb: scope_pb2.Scope) -> Scope:
        """A scope from a request: bounded, every label and device an id, no empty selector (it would
        select every device), else INVALID_ARGUMENT."""
        if len(pb.selectors) > MAX_SELECTORS or len(pb.devices) > MAX_SCOPE_DEVICES:
            why = f"at most {MAX_SELECTORS} selectors and {MAX_SCOPE_DEVICES} devices"
            raise _invalid(f"scope: {why}")
        for selector in pb.selectors:
            if not selector.labels:
                raise _invalid("scope: an empty selector would select every device")
            check_labels(selector.labels, "scope")
        for device in pb.devices:
            check_device_id(device, "scope device")
        return cls.from_proto(pb)

    def to_proto(self) -> scope_pb2.Scope:
        return scope_pb2.Scope(
            selectors=[scope_pb2.LabelSelector(labels=dict(s)) for s in sorted(self.selectors, key=sorted)],
            devices=sorted(self.devices),
        )


FLEET = Scope()
"""The whole fleet (a token without a scope)."""

Labels = Callable[[str], Awaitable[Mapping[str, str]]]
"""A device's hub-assigned labels, read now (``Credentials.labels``)."""
ListedLabels = Callable[[str], Mapping[str, str]]
"""A device's hub-assigned labels from the hub's view of them (``CredentialsView.labels_of``)."""


class ScopeGuard:
    """The API's scope checks. Checks of one device read its labels now (``labels``): an admin's
    relabelling counts at once on every hub process; filters of a list use the hub's view of them
    (``listed``), at most ``identity.CACHE_S`` old on other hub processes. Every refusal is
    ``OutOfScope`` (PERMISSION_DENIED), naming what the request named and the caller's scope, and
    saying the same of an unknown device or agent as of one outside the scope."""

    def __init__(self, labels: Labels, listed: ListedLabels, agents: AgentRegistry) -> None:
        self.labels = labels
        self.listed = listed
        self.agents = agents

    async def device(self, scope: Scope, device_id: str, what: str) -> None:
        """``device_id`` is in ``scope``, else ``OutOfScope`` (none named: the method refuses that)."""
        if not device_id or await self.holds_devices(scope, (device_id,)):
            return
        raise OutOfScope(f"{what}: device {device_id} is outside your scope ({scope})", device_id, str(scope))

    async def agent(self, scope: Scope, agent_id: str, what: str) -> hub_pb2.AgentRecord | None:
        """The agent's record when its owner is in ``scope``, else ``OutOfScope``; None for a fleet-wide
        caller (nothing is read: the method reads what it needs, as without scopes)."""
        if scope.fleet_wide:
            return None
        record = await self.agents.get(agent_id) if agent_id else None
        if record is None or not scope.covers(record.device_id, await self.labels(record.device_id)):
            raise OutOfScope(
                f"{what}: agent {agent_id} is not on a device in your scope ({scope})", "", str(scope)
            )
        return record

    async def command(self, scope: Scope, agent_id: str, device_id: str, what: str) -> None:
        """A command about an agent goes to ``device_id``, else the agent's owner: that device is in
        ``scope``."""
        if scope.fleet_wide:
            return
        if device_id:
            await self.device(scope, device_id, what)
        else:
            await self.agent(scope, agent_id, what)

    async def holds_devices(self, scope: Scope, devices: Iterable[str]) -> bool:
        """Every one of ``devices`` is in ``scope`` (their labels read now)."""
        if scope.fleet_wide:
            return True
        return all([scope.covers(d, await self.labels(d)) for d in devices])

    def sees(self, scope: Scope, device_id: str) -> bool:
        """A list shows ``device_id`` (or what runs on it) to a caller of ``scope``."""
        return scope.fleet_wide or scope.covers(device_id, self.listed(device_id))

    @staticmethod
    def fleet(scope: Scope, what: str) -> None:
        """A method that works on the whole fleet: only for a token without a scope."""
        if not scope.fleet_wide:
            raise OutOfScope(
                f"{what} works on the whole fleet: it needs a token without a scope", "", str(scope)
            )

    @staticmethod
    def holds(scope: Scope, other: Scope, what: str) -> None:
        """``other`` (a goal's, a token's) is within ``scope``, else ``OutOfScope``."""
        if not other.within(scope):
            raise OutOfScope(f"{what} reaches more than your scope ({scope}): {other}", "", str(scope))
