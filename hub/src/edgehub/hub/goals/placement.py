"""The planner's view of one device, read from its twin.

Twins are JSON the devices write, and daemons of several versions share a fleet, so every field but
``device_id`` may be missing or of the wrong type: a missing one takes the value an older daemon
implies (the built-in tools, no labels, no memories), a malformed one the most cautious value
(no free slot, not online).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from ..fleet.registry import is_online

BUILTIN_TOOLS = frozenset({"write_file", "read_file", "run_command", "remember", "recall", "finish"})
"""The tools a device is assumed to offer when its twin lists none: the edge's built-ins
(``edge/agent/tools/builtins.py``). ``knowledge`` is left out: the daemon adds it only with a link to
the hub's knowledge graph, which a twin without a tool list cannot confirm; a device also can disable
built-ins (``[tools] enabled``). Daemons should report their tool names in the twin's ``tools``."""
DEFAULT_MAX_CONCURRENT = 2
"""The edge's ``[agent] max_concurrent`` default."""


@dataclass(frozen=True, slots=True)
class DeviceView:
    """What placement needs to know about a device, at one moment."""

    device_id: str
    online: bool = False
    """Running, with a recent heartbeat (``registry.is_online``)."""
    draining: bool = False
    """Drained by an operator: finishes its agents, takes no new ones."""
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
    agents: frozenset[str] = frozenset()
    """Ids of the agents it reported running (empty when it reports only a count)."""
    """Lower-case keywords of what the device's L3 memories are about: a hint for data locality."""

    @property
    def eligible(self) -> bool:
        """May be given new work."""
        return self.online and not self.draining

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
    def from_twin(cls, twin: Mapping[str, Any], now: float) -> DeviceView:
        """The view of ``twin`` at ``now`` (seconds since the epoch, as the twin's ``sent_at``)."""
        raw = twin.get("hardware")
        hardware: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        running = twin.get("agents_running", [])  # a list of agent ids; a count is accepted too
        tools = _strings(twin.get("tools"))
        return cls(
            device_id=str(twin["device_id"]),
            online=_online(twin, now),
            draining=twin.get("draining") is True,
            load=_float(twin.get("load"), 0.0),
            cpus=max(1, _int(hardware.get("cpus"), 1)),
            running=len(running) if isinstance(running, list) else _int(running, 0),
            max_concurrent=_int(twin.get("max_concurrent"), DEFAULT_MAX_CONCURRENT),
            tools=frozenset(tools) if tools is not None else BUILTIN_TOOLS,
            labels=MappingProxyType(_builtin_labels(twin, hardware) | _labels(twin.get("labels"))),
            model=str(twin.get("model") or ""),
            arch=str(hardware.get("arch") or ""),
            memories=frozenset(m.strip().lower() for m in _strings(twin.get("memories")) or ()),
            agents=frozenset(str(a) for a in running) if isinstance(running, list) else frozenset(),
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

    def views(self, twins: Iterable[tuple[str, int, Mapping[str, Any]]], now: float) -> list[DeviceView]:
        """The views of ``twins`` (device id, revision, twin) at ``now``."""
        if 0 <= now - self._at < self.max_age_s:
            return self._list
        out, seen = [], set()
        for device_id, revision, twin in twins:
            if not isinstance(twin, Mapping) or not isinstance(twin.get("device_id"), str):
                continue  # what a device wrote is input: a twin without an id places nothing
            seen.add(device_id)
            cached = self._views.get(device_id)
            if cached is None or cached[0] != revision:
                cached = (revision, DeviceView.from_twin(twin, now))
            online = _online(twin, now)
            if cached[1].online != online:
                cached = (revision, replace(cached[1], online=online))
            self._views[device_id] = cached
            out.append(cached[1])
        for gone in self._views.keys() - seen:
            del self._views[gone]
        self._list, self._at = out, now
        return out


def _online(twin: Mapping[str, Any], now: float) -> bool:
    try:
        return is_online(twin if isinstance(twin, dict) else dict(twin), now)
    except (TypeError, ValueError):  # a sent_at or heartbeat_s that is not a number
        return False


def _float(raw: object, default: float) -> float:
    """``raw`` if it is a finite number (JSON from a device may hold ``true``, ``"3"`` or ``NaN``)."""
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        return default
    return float(raw)


def _int(raw: object, default: int) -> int:
    return int(_float(raw, default))


def _strings(raw: object) -> list[str] | None:
    """The strings of a list (None when it is not a list: the field was not reported)."""
    return [s for s in raw if isinstance(s, str)] if isinstance(raw, list) else None


def _builtin_labels(twin: Mapping[str, Any], hardware: Mapping[str, Any]) -> dict[str, str]:
    profile = twin.get("profile")
    found = {
        "arch": hardware.get("arch"),
        "profile": profile.get("name") if isinstance(profile, Mapping) else None,
        "model": twin.get("model_name"),
    }
    return {k: v for k, v in found.items() if isinstance(v, str) and v}


def _labels(raw: object) -> dict[str, str]:
    if not isinstance(raw, Mapping):
        return {}
    return {str(k): str(v) for k, v in raw.items() if isinstance(v, str | int | float | bool)}
