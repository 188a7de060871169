"""Choosing a device for each task that is ready to run.

A device can take a task when it offers all the task's tools, is online and not draining, carries
the task's labels and none of its ``avoid`` labels, and has a free agent slot (``max_concurrent``
minus running agents, minus what the hub dispatched there that the twin does not show yet: ``busy``).
Among those, in order:

1. spread: fewer tasks already placed on it in this call. Tasks ready together are independent
   (each one's needs are done), so this is how a fork runs on several devices, not queued on one;
2. the highest score: free share of its slots, minus load per CPU, plus data locality (words of the
   task's goal among the device's memory keywords) and a bonus for the device in ``affinity``;
3. the device id, so the same inputs always give the same answer.

Tasks are placed most constrained first (fewest devices could take them), so a task only one device
can run is not crowded out by one that could go anywhere. A task that cannot be placed comes back as
``Unplaced`` with the first reason that rules out every device.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from edgehub.protocol.keywords import words

from .placement import DeviceView
from .validate import Plan, PlannedTask

LOAD_WEIGHT = 0.5
LOCALITY_WEIGHT = 0.5
"""Per shared word, for at most ``LOCALITY_CAP`` words: locality can outweigh a busier device, never
a full one (full devices are not candidates)."""
LOCALITY_CAP = 3
AFFINITY_BONUS = 1.0


@dataclass(frozen=True, slots=True)
class Unplaced:
    """A ready task no device can take now."""

    task_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Assignment:
    placed: Mapping[str, str]
    """Task id -> device id."""
    unplaced: tuple[Unplaced, ...] = ()


def assign(
    plan: Plan,
    ready: Sequence[str],
    devices: Sequence[DeviceView],
    *,
    affinity: Mapping[str, str] | None = None,
    busy: Mapping[str, int] | None = None,
) -> Assignment:
    """A device for each of the ``ready`` tasks of ``plan`` that one can take.

    ``affinity``: task id -> a device to prefer (where its inputs or its agent's memories are).
    ``busy``: device id -> slots taken by dispatches not yet reflected in its twin."""
    unknown = [t for t in ready if t not in plan.ids]
    if unknown:
        raise ValueError(f"tasks not in the plan: {', '.join(unknown)}")
    affinity = affinity or {}
    taken = Counter(busy or {})
    here: Counter[str] = Counter()  # tasks placed on each device by this call
    tasks = [plan.task(t) for t in dict.fromkeys(ready)]
    fits = {t.id: [d for d in devices if _can_run(d, t)] for t in tasks}
    tasks.sort(key=lambda t: (len(fits[t.id]), plan.ids.index(t.id)))
    placed: dict[str, str] = {}
    unplaced: list[Unplaced] = []
    for t in tasks:
        free = [d for d in fits[t.id] if _free(d, taken) > 0]
        if not free:
            unplaced.append(Unplaced(t.id, _why(t, devices, taken)))
            continue
        best = min(free, key=lambda d: (here[d.device_id], -_score(t, d, taken, affinity), d.device_id))
        placed[t.id] = best.device_id
        taken[best.device_id] += 1
        here[best.device_id] += 1
    order = {t: i for i, t in enumerate(plan.ids)}
    unplaced.sort(key=lambda u: order[u.task_id])
    return Assignment(MappingProxyType(placed), tuple(unplaced))


def _can_run(d: DeviceView, t: PlannedTask) -> bool:
    return d.eligible and d.offers(t.tools) and d.matches(t.labels, t.avoid)


def _free(d: DeviceView, taken: Counter[str]) -> int:
    return d.free_slots - taken[d.device_id]


def _score(t: PlannedTask, d: DeviceView, taken: Counter[str], affinity: Mapping[str, str]) -> float:
    free_share = _free(d, taken) / max(1, d.max_concurrent)
    load = min(d.load / d.cpus, 2.0)
    near = min(len(words(t.goal) & words(" ".join(d.memories))), LOCALITY_CAP)
    bonus = AFFINITY_BONUS if affinity.get(t.id) == d.device_id else 0.0
    return free_share - LOAD_WEIGHT * load + LOCALITY_WEIGHT * near + bonus


def _why(t: PlannedTask, devices: Sequence[DeviceView], taken: Counter[str]) -> str:
    """The first requirement no device meets, naming the devices that came closest."""
    with_tools = [d for d in devices if d.offers(t.tools)]
    if not with_tools:
        return f"no device offers {', '.join(t.tools)}" if devices else "no devices"
    up = [d for d in with_tools if d.eligible]
    if not up:
        states = ", ".join(f"{d.device_id} ({d.unavailable})" for d in with_tools)
        return f"every device with its tools is unavailable: {states}"
    if not any(d.matches(t.labels, t.avoid) for d in up):
        wanted = [f"the labels {dict(t.labels)}"] if t.labels else []
        wanted += [f"none of the labels {dict(t.avoid)}"] if t.avoid else []
        return f"no available device with its tools has {' and '.join(wanted)}"
    full = [d for d in up if d.matches(t.labels, t.avoid)]
    states = ", ".join(
        f"{d.device_id} ({d.running}/{d.max_concurrent} running, {taken[d.device_id]} more sent)"
        for d in full
    )
    return f"every device that could run it is full: {states}"
