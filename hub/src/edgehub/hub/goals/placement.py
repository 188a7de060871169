"""The planner's view of one device, read from its twin (``DeviceTwin``, decoded on the hub by
``fleet.devices``, which also reads the JSON twins of older daemons: a missing field takes the value an
older daemon implies, such as the built-in tools, a malformed one the most cautious value).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from edgehub.protocol.v1 import twin_pb2

from ..fleet.devices import BUILTIN_TOOLS, is_online

__all__ = ["BUILTIN_TOOLS", "DEFAULT_MAX_CONCURRENT", "DeviceView", "FleetCache"]

DEFAULT_MAX_CONCURRENT = 2
"""The edge's ``[agent] max_concurrent`` default (a twin that reports none)."""


@dataclass(frozen=True, slots=True)
class DeviceView:
    """What placement needs to know about a device, at one moment."""

    device_id: str
    online: bool = False
    """Running, with a recent heartbeat (``registry.is_online``)."""
    draining: bool = False
    """Drained by an operator: finishes its agents, takes no new ones."""
    paused: str = ""
    """Why its agents are paused (its store's file system is full: the twin's ``paused_reason``); a
    paused device takes no new work until it has space again."""
    load: float = 0.0
    """One-minute load average."""
    cpus: int = 1
    running: int = 0
    """Agents running now."""
    max_concurrent: int = DEFAULT_MAX_CONCURRENT
    tools: frozenset[str] = BUILTIN_TOOLS
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Operator labels (``site``, ``line``, ``gpu``) for affinity and anti-affinity, over two the device
    reports itself: ``arch`` (``x86_64``, ``aarch64``), ``profile`` (its hardware profile, e.g.
    ``jetson-orin-nano``) and ``model`` (its GGUF's name, e.g. ``gemma-3-270m-q4_k_m``), so
    ``--devices profile=raspberry-pi-5`` selects by hardware and ``--devices model=...`` by model."""
    model: str = ""
    """The GGUF the device's brain runs ('' when not reported)."""
    arch: str = ""
    memories: frozenset[str] = frozenset()
    """Lower-case keywords of what the device's L3 memories are about: a hint for data locality."""
    agents: frozenset[str] = frozenset()
    """Ids of the agents it reported running (empty when it reports only a count)."""
    hub_labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """The labels the hub assigned to the device (its enrollment token's, an admin's since): what a
    goal's scope places by (``fleet.scopes``); unlike ``labels``, never the device's own claim."""

    @property
    def eligible(self) -> bool:
        """May be given new work."""
        return self.online and not self.draining and not self.paused

    @property
    def unavailable(self) -> str:
        """Why it takes no new work ("offline", "draining", "paused: ..."); empty when it takes work."""
        if not self.online:
            return "offline"
        if self.draining:
            return "draining"
        return f"paused: {self.paused[:80]}" if self.paused else ""

    @property
    def free_slots(self) -> int:
        return max(0, self.max_concurrent - self.running)

    def offers(self, tools: Iterable[str]) -> bool:
        return all(t in self.tools for t in tools)

    def matches(self, labels: Mapping[str, str], avoid: Mapping[str, str]) -> bool:
        """Carries all of ``labels`` and none of ``avoid`` (label values compared as strings)."""
        mine = self.labels
        return all(mine.get(k) == v for k, v in labels.items()) and not any(
            mine.get(k) == v for k, v in avoid.items()
        )

    @classmethod
    def from_twin(
        cls, twin: twin_pb2.DeviceTwin, now: float, hub_labels: Mapping[str, str] | None = None
    ) -> DeviceView:
        """The view of ``twin`` at ``now`` (seconds since the epoch, as the twin's ``sent_at``), with the
        labels the hub assigned the device."""
        running = list(twin.agents_running)  # '' for an agent an older daemon only counted
        return cls(
            device_id=twin.device_id,
            online=is_online(twin, now),
            draining=twin.draining,
            paused=twin.paused_reason,
            load=twin.load if math.isfinite(twin.load) else 0.0,
            cpus=max(1, twin.hardware.cpus),
            running=len(running),
            max_concurrent=twin.max_concurrent or DEFAULT_MAX_CONCURRENT,
            tools=frozenset(twin.tools),
            labels=MappingProxyType(_builtin_labels(twin) | dict(twin.labels)),
            model=twin.model,
            arch=twin.hardware.arch,
            memories=frozenset(m.strip().lower() for m in twin.memories),
            agents=frozenset(a for a in running if a),
            hub_labels=MappingProxyType(dict(hub_labels or {})),
        )


class FleetCache:
    """``DeviceView`` s of a live set of twins, for placement many times a second over a large fleet:
    each view is rebuilt only when its twin's revision changed, online-ness is judged at read time
    (it changes with the clock alone), and the whole list is reused for ``max_age_s`` (the scheduler
    counts its own dispatches the twins do not show yet, so a list that old places as well)."""

    def __init__(self, max_age_s: float = 0.2) -> None:
        self.max_age_s = max_age_s
        self._views: dict[str, tuple[int, DeviceView]] = {}
        self._list: list[DeviceView] = []
        self._at = -math.inf

    def views(
        self,
        twins: Iterable[tuple[str, int, twin_pb2.DeviceTwin]],
        now: float,
        hub_labels: Callable[[str], Mapping[str, str]] = lambda _: {},
    ) -> list[DeviceView]:
        """The views of ``twins`` (device id, revision, twin) at ``now``, each with the labels the hub
        assigned its device (``hub_labels``)."""
        if 0 <= now - self._at < self.max_age_s:
            return self._list
        out, seen = [], set()
        for device_id, revision, twin in twins:
            seen.add(device_id)
            cached = self._views.get(device_id)
            if cached is None or cached[0] != revision:
                cached = (revision, DeviceView.from_twin(twin, now))
            online = is_online(twin, now)
            if cached[1].online != online:
                cached = (revision, replace(cached[1], online=online))
            assigned = hub_labels(device_id)
            if cached[1].hub_labels != assigned:
                cached = (revision, replace(cached[1], hub_labels=MappingProxyType(dict(assigned))))
            self._views[device_id] = cached
            out.append(cached[1])
        for gone in self._views.keys() - seen:
            del self._views[gone]
        self._list, self._at = out, now
        return out


def _builtin_labels(twin: twin_pb2.DeviceTwin) -> dict[str, str]:
    """What the device reports of itself, selectable as labels (its explicit labels win)."""
    found = {"arch": twin.hardware.arch, "profile": twin.profile.name, "model": twin.model_name}
    return {k: v for k, v in found.items() if v}
