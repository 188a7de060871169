"""The device twins (``DeviceTwin``) the edges put in JetStream KV (``edgehub-devices``), read in this
one place on the hub.

``TWINS`` is their codec: protobuf, and, through its legacy decoder, the JSON twins daemons of the
release before still write while a fleet rolls out (every field of those may be missing or of the
wrong type: a missing one takes what an older daemon implied, a malformed one the most cautious value).
A twin's device id is its key's: one whose ``device_id`` field disagrees is refused (logged, never
listed), and every self-reported number and list is bounded before anything reads it (``bounds``).
A revoked device (``revoked``: the ids ``Credentials`` marks revoked) is never online, whatever its
last twin said.

``DeviceWatcher`` keeps the hub's live view of the twins from a watch and measures how late heartbeats
arrive; ``DeviceRegistry`` answers from that view once it has synced, else from the bucket. Both judge
"online" with ``is_online``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Container, Mapping
from dataclasses import dataclass

from google.protobuf import json_format
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry, Gauge, Histogram

from edgehub.protocol.ids import id_of_key
from edgehub.protocol.v1 import hub_pb2, twin_pb2
from edgehub.sync.records import (
    Change,
    ChangeKind,
    JsonObject,
    ProtoCodec,
    RecordStore,
    RecordUnreadable,
    json_legacy,
)
from edgehub.sync.streams import DEVICES

from .bounds import admit

log = logging.getLogger("edgehub.hub.fleet.devices")
T = twin_pb2
DeviceTwin = twin_pb2.DeviceTwin

TWIN_VERSION = 1
MISSED_BEATS = 3
"""A device is offline once this many heartbeats in a row have not arrived."""
LEGACY_HEARTBEAT_S = 5.0
"""The heartbeat a JSON twin without ``heartbeat_s`` implies (the edge's default)."""
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)
BUILTIN_TOOLS = frozenset({"write_file", "read_file", "run_command", "remember", "recall", "finish"})
"""The tools a device is assumed to offer when its (JSON) twin lists none: the edge's built-ins
(``edge/agent/tools/builtins.py``). ``knowledge`` is left out: the daemon adds it only with a link to
the hub's knowledge graph, which a twin without a tool list cannot confirm; a device also can disable
built-ins (``[tools] enabled``). Daemons report their tool names in the twin's ``tools``."""
MAX_LEGACY_RUNNING = 10_000
"""Agents a JSON twin may claim by count (it named none): the count is input, bounded."""
_STATES = {"running": T.DEVICE_STATE_RUNNING, "stopped": T.DEVICE_STATE_STOPPED}


# the twin's legacy (JSON) format ----------------------------------------------------------------------
def _number(raw: object, default: float = 0.0) -> float:
    """``raw`` if it is a finite number (JSON from a device may hold ``true``, ``"3"`` or ``NaN``)."""
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        return default
    return float(raw)


def _count(raw: object) -> int:
    return max(0, int(_number(raw)))


def _text(raw: object) -> str:
    return raw if isinstance(raw, str) else ""


def _strings(raw: object) -> list[str] | None:
    """The strings of a list (None when it is not a list: the field was not reported)."""
    return [s for s in raw if isinstance(s, str)] if isinstance(raw, list) else None


def _running(raw: object) -> list[str]:
    """Agent ids; an older daemon's count becomes that many unnamed agents ('')."""
    if isinstance(raw, list):
        return [str(a) for a in raw]
    return [""] * min(_count(raw), MAX_LEGACY_RUNNING)


def _labels(raw: object) -> dict[str, str]:
    if not isinstance(raw, Mapping):
        return {}
    return {str(k): str(v) for k, v in raw.items() if isinstance(v, str | int | float | bool)}


def _profile(raw: object) -> twin_pb2.HardwareProfile:
    if not isinstance(raw, Mapping):
        return T.HardwareProfile()
    settings = raw.get("settings")
    found = settings if isinstance(settings, Mapping) else {}
    try:
        parsed = json_format.ParseDict(dict(found), T.ProfileSettings(), ignore_unknown_fields=True)
    except json_format.ParseError:  # a value of the wrong type for its field
        parsed = T.ProfileSettings()
    return T.HardwareProfile(
        name=_text(raw.get("name")),
        settings=parsed,
        apply=raw.get("apply") is True,
        error=_text(raw.get("error")),
    )


def twin_from_json(raw: JsonObject) -> twin_pb2.DeviceTwin:
    """A twin as the daemons of the release before wrote it (a JSON object; ``device_id`` required)."""
    hardware = raw.get("hardware")
    hw = hardware if isinstance(hardware, Mapping) else {}
    return DeviceTwin(
        schema_version=TWIN_VERSION,
        device_id=raw["device_id"] if isinstance(raw["device_id"], str) else "",
        state=_STATES.get(str(raw.get("state")), T.DEVICE_STATE_UNSPECIFIED),
        heartbeat_s=_number(raw.get("heartbeat_s", LEGACY_HEARTBEAT_S)),
        sent_at=_number(raw.get("sent_at")),
        version=_text(raw.get("version")),
        hardware=T.Hardware(
            arch=_text(hw.get("arch")), cpus=_count(hw.get("cpus")), kernel=_text(hw.get("kernel"))
        ),
        load=_number(raw.get("load")),
        outbox_depth=_count(raw.get("outbox_depth")),
        agents_running=_running(raw.get("agents_running")),
        max_concurrent=_count(raw.get("max_concurrent")),
        draining=raw.get("draining") is True,
        tools=sorted(BUILTIN_TOOLS) if (tools := _strings(raw.get("tools"))) is None else tools,
        labels=_labels(raw.get("labels")),
        model=_text(raw.get("model")),
        model_name=_text(raw.get("model_name")),
        profile=_profile(raw.get("profile")),
        memories=_strings(raw.get("memories")) or [],
    )


TWINS = ProtoCodec(DeviceTwin, TWIN_VERSION, legacy=json_legacy(twin_from_json))
"""The twin's one serialisation on the hub."""


# online --------------------------------------------------------------------------------------------
def heartbeat_age(twin: twin_pb2.DeviceTwin, now: float) -> float:
    """Seconds since the device sent ``twin`` (by the device's clock)."""
    return now - twin.sent_at


def is_online(twin: twin_pb2.DeviceTwin, now: float) -> bool:
    """Running, and its last heartbeat is at most ``MISSED_BEATS`` intervals old."""
    beats = MISSED_BEATS * twin.heartbeat_s
    return twin.state == T.DEVICE_STATE_RUNNING and heartbeat_age(twin, now) <= beats


def device(twin: twin_pb2.DeviceTwin, now: float, revoked: bool = False) -> hub_pb2.Device:
    """The API's view of a device: its twin, and online (never when ``revoked``) and last seen as
    judged at ``now``."""
    age = heartbeat_age(twin, now)
    return hub_pb2.Device(
        device_id=twin.device_id,
        online=is_online(twin, now) and not revoked,
        last_seen_s=round(age, 1) if math.isfinite(age) else 0.0,
        twin=twin,
    )


def admitted(key: str, twin: twin_pb2.DeviceTwin, received_at: float) -> twin_pb2.DeviceTwin | None:
    """``twin`` as read from ``key``, bounded; None (logged) when it claims another device's id: the
    device's credentials allow it only its own key, so the key is who wrote it."""
    why = admit(key, twin, received_at)
    if why:
        log.warning("%s", why)
        return None
    return twin


def _sorted(devices: list[hub_pb2.Device]) -> list[hub_pb2.Device]:
    return sorted(devices, key=lambda d: d.device_id)


@dataclass(frozen=True, slots=True)
class SeenTwin:
    """A device twin in the hub's live view."""

    twin: twin_pb2.DeviceTwin
    """The twin as the device last put it (its ``device_id`` the key's)."""
    seen_at: float
    """When this hub received it (hub clock, ``time.time()``)."""
    revision: int
    """Its KV revision (the bucket stream's sequence): a re-watch skips what the view already has."""


class DeviceWatcher:
    """The hub's live view of the device twins (device id -> ``SeenTwin``), from a watch on the
    ``edgehub-devices`` bucket, with three metrics on the registry passed in:

    - ``edgehub_hub_heartbeat_lag_seconds`` (histogram): per update, hub receive time minus the
      device's ``sent_at``, so it includes any clock skew between the two (clamped at 0). A watch's
      initial snapshot is not timed (a twin may be days old), except newer twins of devices already in
      the view: updates missed while the watch was down, whose lag is real.
    - ``edgehub_hub_heartbeat_queue_seconds`` (histogram): the hub's own share of it, hub receive
      time minus the time the server stored the twin (as ``edgehub_hub_event_queue_seconds``).
    - ``edgehub_hub_devices_online`` (gauge): ``is_online`` over the view, computed at scrape time.

    ``run(stop)`` re-creates the watch after any error (server restart, lost connection) every
    ``retry_s``, logging a repeated error once. nats-py's ordered consumer already re-subscribes after
    missed idle heartbeats; as a backstop, when no update arrived for ``idle_check_s`` the watcher asks
    the bucket for its last revision and re-watches if the bucket moved on without it.
    """

    def __init__(
        self,
        js: JetStreamContext,
        metrics: CollectorRegistry,
        *,
        retry_s: float = 0.5,
        idle_check_s: float = 5.0,
        revoked: Container[str] = frozenset(),
    ) -> None:
        self.store = RecordStore(js, DEVICES.name, TWINS)
        self.revoked = revoked
        """Device ids whose credentials are revoked: listed, never online, never given work."""
        self.retry_s = retry_s
        self.idle_check_s = idle_check_s
        self.view: dict[str, SeenTwin] = {}
        self.synced = False
        """The view holds every twin the bucket had when the first watch started (then stays live)."""
        self.watches = 0
        """How many watches were created (1 + re-watches)."""
        self._horizon = 0  # the highest bucket revision the current watch has accounted for
        self._last_error = ""
        self.lag = Histogram(
            "edgehub_hub_heartbeat_lag_seconds",
            "Heartbeat lag: hub receive time minus the device's sent_at",
            buckets=LAG_BUCKETS,
            registry=metrics,
        )
        self.queue = Histogram(
            "edgehub_hub_heartbeat_queue_seconds",
            "From NATS storing a twin to the hub receiving it",
            buckets=LAG_BUCKETS,
            registry=metrics,
        )
        self.online = Gauge(
            "edgehub_hub_devices_online",
            "Devices with a recent heartbeat (as the hub sees them)",
            registry=metrics,
        )
        self.online.set_function(self.count_online)

    def devices(self, now: float | None = None) -> list[hub_pb2.Device] | None:
        """The devices from the live view (no store reads); None until the first snapshot is complete."""
        if not self.synced:
            return None
        now = time.time() if now is None else now
        seen = list(self.view.items())
        return _sorted([device(s.twin, now, d in self.revoked) for d, s in seen])

    def twins(self) -> list[tuple[str, int, twin_pb2.DeviceTwin]]:
        """(device id, revision, twin) of every device in the view that is not revoked (the planner's)."""
        return [(d, s.revision, s.twin) for d, s in list(self.view.items()) if d not in self.revoked]

    def count_online(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        seen = list(self.view.items())  # one C-level copy: the metrics thread reads while the loop writes
        return sum(is_online(s.twin, now) and d not in self.revoked for d, s in seen)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._watch(stop)
            except Exception as exc:  # server restarting, connection re-established, bucket missing
                error = f"{exc.__class__.__name__}: {exc}"
                level = logging.DEBUG if error == self._last_error else logging.WARNING
                log.log(level, "device watch failed (%s); re-watching", error)
                self._last_error = error
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.retry_s)

    async def _watch(self, stop: asyncio.Event) -> None:
        self._horizon = await self.store.last_revision()  # everything up to here is in the snapshot
        async with self.store.watch() as watch:
            self.watches += 1
            live, idle_since = False, time.monotonic()
            while not stop.is_set():
                change = await watch.next(0.5)  # short: notice ``stop`` promptly
                if change is None:
                    if time.monotonic() - idle_since >= self.idle_check_s:
                        await self._check()
                        idle_since = time.monotonic()
                    continue
                idle_since = time.monotonic()
                if change.kind is ChangeKind.SYNCED:  # the end of the initial snapshot
                    live = self.synced = True
                    continue
                self._apply(change, live)
                self._last_error = ""

    async def _check(self) -> None:
        last = await self.store.last_revision()  # raises while the server is unreachable
        if last > self._horizon:
            raise RuntimeError(f"the watch is stale: the bucket is at {last}, the watch at {self._horizon}")

    def _apply(self, change: Change[twin_pb2.DeviceTwin], live: bool) -> None:
        self._horizon = max(self._horizon, change.revision)
        device_id = id_of_key(change.key)
        known = self.view.get(device_id)
        if known is not None and change.revision <= known.revision:
            return  # a re-watch's snapshot: already in the view
        if change.kind is ChangeKind.DELETE:
            self.view.pop(device_id, None)
            return
        if change.value is None:  # UNREADABLE: what a device wrote is input; the last good twin stays
            log.debug("twin %s unreadable: %s", change.key, change.error)
            return
        seen_at = time.time()
        twin = admitted(change.key, change.value, seen_at)
        if twin is None:  # another device's id: refused; the device's last good twin stays (and ages)
            return
        self.view[device_id] = SeenTwin(twin, seen_at, change.revision)
        if not (live or known is not None):
            return
        if twin.sent_at:
            self.lag.observe(max(0.0, seen_at - twin.sent_at))
        if change.stored_at is not None:
            self.queue.observe(max(0.0, seen_at - change.stored_at))


class DeviceRegistry:
    """The devices as their twins say (online = a recent heartbeat): from ``watcher``'s live view once
    it has synced, else read from the bucket."""

    def __init__(
        self,
        js: JetStreamContext,
        watcher: DeviceWatcher | None = None,
        revoked: Container[str] = frozenset(),
    ) -> None:
        self.store = RecordStore(js, DEVICES.name, TWINS)
        self.watcher = watcher
        self.revoked = watcher.revoked if watcher is not None else revoked

    async def all(self, now: float | None = None) -> list[hub_pb2.Device]:
        now = time.time() if now is None else now
        live = self.watcher.devices(now) if self.watcher is not None else None
        if live is not None:
            return live
        found = [(s.key, admitted(s.key, s.value, now)) for s in await self.store.list()]
        return _sorted([device(t, now, id_of_key(k) in self.revoked) for k, t in found if t is not None])

    async def get(self, device_id: str, now: float | None = None) -> hub_pb2.Device | None:
        """The device; None when it never reported (or its twin is unreadable)."""
        now = time.time() if now is None else now
        revoked = device_id in self.revoked
        if self.watcher is not None and self.watcher.synced:
            seen = self.watcher.view.get(device_id)
            return device(seen.twin, now, revoked) if seen is not None else None
        try:
            found = await self.store.get(device_id)
        except RecordUnreadable as exc:
            log.warning("twin of %s unreadable: %s", device_id, exc)
            return None
        twin = admitted(found.key, found.value, now) if found is not None else None
        return device(twin, now, revoked) if twin is not None else None
