"""Fuzz target ``twins``: what a device writes into its key of the twins bucket, as the hub reads it:
the codec (``hub.fleet.devices.TWINS``: protobuf, or the JSON an older daemon wrote), the bounds
(``hub.fleet.bounds``), the hub's live view (``DeviceWatcher``), the API's ``Device`` and the planner's
``DeviceView``, and a placement over the fleet the view makes.

Each input is one write: a key (the device's own ``kv_key``, or another valid key) and a value (a
``DeviceTwin`` built from the fuzzer's bytes, maybe damaged, or a JSON object of fuzzed values for
the twin's fields, or fuzzed text). The view already holds ``dev-a``'s good twin.

Properties (an ``AssertionError`` or any exception is a crash):

- decoding raises nothing but ``RecordUnreadable``; the watcher, the API's view, the planner's view
  and placement raise nothing;
- an unreadable or refused twin changes nothing in the view (the last good twin stays);
- a write changes no other device's entry;
- an admitted twin is within every bound: bounding it again changes nothing, and its heartbeat,
  clock, counts, lists and strings are within their limits.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter

from atheris import FuzzedDataProvider
from prometheus_client import CollectorRegistry

from edgehub.hub.config import PlannerConfig
from edgehub.hub.fleet import bounds
from edgehub.hub.fleet.devices import TWINS, DeviceWatcher, device
from edgehub.hub.goals import DeviceView, PlanDraft, validate
from edgehub.hub.goals.placement import FleetCache
from edgehub.hub.goals.planner import Planned
from edgehub.hub.goals.record import adopt_plan, new_record
from edgehub.hub.goals.schedule import advance
from edgehub.protocol.ids import id_of_key, kv_key
from edgehub.protocol.v1 import goals_pb2, twin_pb2
from edgehub.sync.fake import FakeJetStream
from edgehub.sync.records import Change, ChangeKind, RecordUnreadable
from tests.fuzz.protos import build, damaged, text

G = goals_pb2
T = twin_pb2
FIELDS = [f.name for f in T.DeviceTwin.DESCRIPTOR.fields] + ["hardware", "profile", "settings", "cpus"]
WORDS = ["dev-a", "dev-x", "=6465763a31", "run_command", "finish", "0.4.1", "running", "stopped"]
CFG = PlannerConfig(enabled=False)


def good_twin(device_id: str, now: float) -> twin_pb2.DeviceTwin:
    return T.DeviceTwin(
        schema_version=1, device_id=device_id, state=T.DEVICE_STATE_RUNNING, sent_at=now, heartbeat_s=5,
        version="0.4.1", tools=["run_command", "finish"], max_concurrent=2,
    )  # fmt: skip


def _json_value(fdp: FuzzedDataProvider, depth: int = 0) -> object:
    kind = fdp.ConsumeIntInRange(0, 8 if depth < 3 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return fdp.ConsumeIntInRange(-(2**70), 2**70)
    if kind == 3:
        return fdp.ConsumeFloat()
    if kind in (4, 5):
        return text(fdp, WORDS + FIELDS)
    if kind in (6, 7):
        return [_json_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    return {text(fdp, FIELDS): _json_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4))}


def value(fdp: FuzzedDataProvider, owner: str) -> bytes:
    """What the device writes (see the module docstring); often naming ``owner``, as its daemon would."""
    how = fdp.ConsumeIntInRange(0, 3)
    if how == 0:
        fields = {fdp.PickValueInList(FIELDS): _json_value(fdp) for _ in range(fdp.ConsumeIntInRange(0, 8))}
        if fdp.ConsumeIntInRange(0, 3):
            fields["device_id"] = owner if fdp.ConsumeBool() else _json_value(fdp)
        return json.dumps(fields).encode()  # NaN and Infinity as Python writes them
    if how == 1:
        return b"{" + fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 200))
    twin = build(T.DeviceTwin, fdp, WORDS)
    if fdp.ConsumeBool():
        twin.schema_version, twin.device_id = 1, owner
    return damaged(twin.SerializeToString(), fdp)


def key(fdp: FuzzedDataProvider) -> str:
    """The key written: mostly ``dev-x``'s own; any other key a device could be permitted."""
    if fdp.ConsumeIntInRange(0, 3):
        return kv_key("dev-x")
    return kv_key(text(fdp, WORDS) or "dev-x")


def check_bounded(twin: twin_pb2.DeviceTwin, received_at: float) -> None:
    again = T.DeviceTwin()
    again.CopyFrom(twin)
    bounds.bound(again, received_at)
    assert again == twin, "bounding an admitted twin again changed it"
    assert 0 <= twin.heartbeat_s <= bounds.MAX_HEARTBEAT_S
    assert 0 <= twin.sent_at <= received_at
    assert math.isfinite(twin.load)
    assert twin.max_concurrent <= bounds.MAX_CONCURRENT
    assert len(twin.tools) <= bounds.MAX_TOOLS
    assert len(twin.labels) <= bounds.MAX_LABELS
    assert len(twin.agents_running) <= bounds.MAX_AGENTS
    assert len(twin.memories) <= bounds.MAX_MEMORIES
    assert all(len(s) <= bounds.MAX_NAME for s in [*twin.tools, *twin.memories, *twin.labels])


def _goal(now: float) -> goals_pb2.Goal:
    record = new_record("inspect", by="op", labels={}, budget=None, approve_tools=[],
                        planner=G.GOAL_PLANNER_OPERATOR, now=now)  # fmt: skip
    fleet = [DeviceView(device_id="dev-a", online=True, tools=frozenset({"run_command"}), max_concurrent=2)]
    draft = PlanDraft.model_validate({"tasks": [
        {"id": "a", "goal": "do a", "needs": [], "tools": ["run_command"], "estimate_tokens": 100},
        {"id": "b", "goal": "do b", "needs": [], "tools": [], "estimate_tokens": 100},
    ]})  # fmt: skip
    adopt_plan(record, Planned(validate(draft, fleet), 1), "submitted", now)
    return record


def one_input(data: bytes) -> None:
    fdp = FuzzedDataProvider(data)
    now = time.time()
    watcher = DeviceWatcher(FakeJetStream(), CollectorRegistry())  # type: ignore[arg-type]
    watcher.synced = True
    good = Change(ChangeKind.PUT, "dev-a", good_twin("dev-a", now), 1, now)
    watcher._apply(good, live=True)
    where = key(fdp)
    raw = value(fdp, id_of_key(where))
    before = dict(watcher.view)
    try:
        change = Change(ChangeKind.PUT, where, TWINS.decode(raw), 2, now)
    except RecordUnreadable as exc:
        change = Change(ChangeKind.UNREADABLE, where, None, 2, now, str(exc))
    watcher._apply(change, live=True)
    owner = id_of_key(where)
    others = {d: s for d, s in watcher.view.items() if d != owner}
    assert others == {d: s for d, s in before.items() if d != owner}, "a write changed another device's twin"
    seen = watcher.view.get(owner)
    if seen is None or seen is before.get(owner):  # unreadable or refused: the view kept what it had
        assert watcher.view == before, "a refused twin changed the view"
    else:
        assert seen.twin.device_id == owner
        check_bounded(seen.twin, seen.seen_at)
    for d, s in watcher.view.items():
        device(s.twin, now, d == "dev-x")
    views = FleetCache().views(watcher.twins(), now)
    watcher.count_online(now)
    advance(_goal(now), views, Counter(), now, CFG, "hub")
