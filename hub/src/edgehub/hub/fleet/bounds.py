"""What the hub admits of a device twin: the one gate between what a device wrote and the registry,
the planner (``goals.placement``) and the rollout health gate (``devices list``).

A twin is the device's own claim, so two rules apply:

- **Identity from what NATS authenticated.** A device's credentials allow it to write only its own KV
  key, so the key names the device. A twin whose ``device_id`` disagrees with its key (a device
  writing "I am devB" into its own key) is refused whole: ``admit`` returns why, and the caller logs it
  and lists nothing from it.
- **Every self-reported number and list is bounded.** A value out of range does not refuse the twin
  (a misconfigured device stays visible) but takes the most cautious value, as the legacy decoder
  does for a malformed one: a heartbeat over ``MAX_HEARTBEAT_S`` counts as that (the device is judged
  offline sooner, never later), a ``sent_at`` ahead of when the hub received the twin counts as then
  (a clock set in the future cannot keep a device online), a version that is not a version is
  unknown (''), lists keep their first ``MAX_*`` valid entries and strings over their bound are
  dropped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from google.protobuf.internal.containers import RepeatedScalarFieldContainer

from edgehub.protocol.ids import id_of_key
from edgehub.protocol.v1 import twin_pb2

MAX_HEARTBEAT_S = 300.0
"""The longest heartbeat interval the hub believes: a device is online at most 3 x this after its last
twin (the edge's default is 5 s)."""
MAX_CONCURRENT = 256
"""Agents a device may claim it can run at once (the planner fills free slots: a device claiming
millions would draw every task)."""
MAX_CPUS = 4096
MAX_LOAD = 1e6
MAX_AGENTS = 10_000
"""Agent ids a twin may list as running."""
MAX_TOOLS = 128
MAX_LABELS = 64
MAX_MEMORIES = 200
"""Keywords of a device's memories (the edge reports 50)."""
MAX_NAME = 128
"""A tool name, a label key, an agent id, a memory keyword."""
MAX_TEXT = 256
"""A label value, the model, the hardware's strings."""
MAX_DETAIL = 1000
"""The hardware profile's error."""
VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$")
"""A version as packages spell it (``0.4.1``, ``0.5.0rc1``, ``1.2.3+local``): at most 64 characters."""
_PRINTABLE = re.compile(r"^[^\x00-\x1f\x7f]*$")


def admit(key: str, twin: twin_pb2.DeviceTwin, received_at: float) -> str:
    """Bound ``twin`` (read from ``key``) in place; why it is refused ('' when admitted)."""
    owner = id_of_key(key)
    if twin.device_id != owner:
        claimed = twin.device_id[:80]
        return f"twin under the key of {owner!r} claims device_id {claimed!r}: refused"
    bound(twin, received_at)
    return ""


def bound(twin: twin_pb2.DeviceTwin, received_at: float) -> None:
    """Every self-reported number, string and list of ``twin`` within its bound (see the module)."""
    twin.heartbeat_s = _within(twin.heartbeat_s, 0.0, MAX_HEARTBEAT_S)
    twin.sent_at = _within(twin.sent_at, 0.0, received_at)
    twin.load = _within(twin.load, 0.0, MAX_LOAD)
    twin.max_concurrent = min(twin.max_concurrent, MAX_CONCURRENT)
    twin.hardware.cpus = min(twin.hardware.cpus, MAX_CPUS)
    if not VERSION.match(twin.version):
        twin.version = ""
    for holder, name in ((twin, "model"), (twin, "model_name"), (twin.hardware, "arch")):
        _text(holder, name, MAX_TEXT)
    _text(twin.hardware, "kernel", MAX_TEXT)
    _text(twin.profile, "name", MAX_NAME)
    _text(twin.profile, "error", MAX_DETAIL)
    _strings(twin.tools, MAX_TOOLS, MAX_NAME)
    _strings(twin.memories, MAX_MEMORIES, MAX_NAME)
    _agents(twin)
    _labels(twin)


def _within(value: float, low: float, high: float) -> float:
    """``value`` clamped to [low, high]; ``low`` when it is not a finite number (the cautious end)."""
    if not math.isfinite(value):
        return low
    return min(max(value, low), high)


def _fits(text: str, limit: int) -> bool:
    return len(text) <= limit and bool(_PRINTABLE.match(text))


def _text(holder: object, name: str, limit: int) -> None:
    if not _fits(getattr(holder, name), limit):
        setattr(holder, name, "")


def _kept(values: Iterable[str], count: int, limit: int) -> list[str]:
    return [v for v in values if v and _fits(v, limit)][:count]


def _strings(field: RepeatedScalarFieldContainer[str], count: int, limit: int) -> None:
    """A repeated string field: its first ``count`` non-empty entries of at most ``limit`` characters."""
    kept = _kept(field, count, limit)
    del field[:]
    field.extend(kept)


def _agents(twin: twin_pb2.DeviceTwin) -> None:
    """Running agents: at most ``MAX_AGENTS``; an id over its bound counts as an unnamed agent ('')."""
    running = [a if _fits(a, MAX_NAME) else "" for a in twin.agents_running[:MAX_AGENTS]]
    del twin.agents_running[:]
    twin.agents_running.extend(running)


def _labels(twin: twin_pb2.DeviceTwin) -> None:
    kept = [(k, v) for k, v in sorted(twin.labels.items()) if k and _fits(k, MAX_NAME) and _fits(v, MAX_TEXT)]
    twin.labels.clear()
    twin.labels.update(dict(kept[:MAX_LABELS]))
