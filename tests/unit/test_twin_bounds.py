"""What the hub admits of a device twin (``hub.fleet.bounds``): the device is the key it was allowed to
write, never the ``device_id`` it claims, and every self-reported number, string and list is bounded,
for any input (hypothesis over arbitrary values)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from edgehub.hub.fleet import bounds
from edgehub.hub.fleet.bounds import admit
from edgehub.hub.fleet.devices import admitted, device, is_online
from edgehub.protocol.ids import kv_key
from edgehub.protocol.v1 import twin_pb2

T = twin_pb2
NOW = 1_800_000_000.0


def twin(device_id: str = "dev-a", **fields: object) -> twin_pb2.DeviceTwin:
    out = T.DeviceTwin(schema_version=1, device_id=device_id, state=T.DEVICE_STATE_RUNNING, sent_at=NOW)
    out.heartbeat_s = 5.0
    for name, value in fields.items():
        setattr(out, name, value)
    return out


def test_a_twin_claiming_another_device_under_its_own_key_is_refused() -> None:
    forged = twin("devB", heartbeat_s=3600, version="9.9.9-forged")
    why = admit(kv_key("devA"), forged, NOW)
    assert "'devA'" in why
    assert "'devB'" in why
    assert admitted(kv_key("devA"), forged, NOW) is None
    assert admitted(kv_key("devA"), twin(""), NOW) is None  # no id is not the key's id either
    assert admitted(kv_key("dev:1"), twin("dev:1"), NOW) is not None  # an encoded key names its id


def test_a_long_heartbeat_or_a_future_clock_cannot_keep_a_device_online() -> None:
    long = admitted("devA", twin("devA", heartbeat_s=3600), NOW)
    assert long is not None
    assert long.heartbeat_s == bounds.MAX_HEARTBEAT_S
    assert not is_online(long, NOW + 3 * bounds.MAX_HEARTBEAT_S + 1)
    ahead = admitted("devA", twin("devA", sent_at=NOW + 10 * 365 * 86400), NOW)
    assert ahead is not None
    assert ahead.sent_at == NOW
    assert not is_online(ahead, NOW + 60)
    nan = admitted("devA", twin("devA", heartbeat_s=math.nan, sent_at=math.inf), NOW)
    assert nan is not None
    assert (nan.heartbeat_s, nan.sent_at) == (0.0, 0.0)


def test_a_revoked_device_is_never_online() -> None:
    fresh = twin("devA")
    assert device(fresh, NOW).online
    assert not device(fresh, NOW, revoked=True).online


def test_versions_lists_and_strings_out_of_bounds_take_cautious_values() -> None:
    t = twin(
        "devA",
        version="1.0; rm -rf /",
        max_concurrent=10**9,
        load=-3.0,
        model="x" * 10_000,
    )
    t.tools.extend(["read_file", "bad\nname", "y" * 500] + [f"t{i}" for i in range(1000)])
    t.labels.update({f"k{i}": "v" for i in range(1000)} | {"evil": "\x00"})
    t.agents_running.extend(["a", "z" * 1000])
    assert admit("devA", t, NOW) == ""
    assert t.version == ""
    assert t.max_concurrent == bounds.MAX_CONCURRENT
    assert t.load == 0.0
    assert t.model == ""
    assert t.tools[0] == "read_file"
    assert len(t.tools) == bounds.MAX_TOOLS
    assert "bad\nname" not in t.tools
    assert len(t.labels) == bounds.MAX_LABELS
    assert "evil" not in t.labels
    assert list(t.agents_running) == ["a", ""]  # an over-long id still counts as an agent
    assert admitted("devA", twin("devA", version="0.5.0rc1+local"), NOW).version == "0.5.0rc1+local"  # type: ignore[union-attr]


floats = st.floats(allow_nan=True, allow_infinity=True)
texts = st.text(max_size=300)


@settings(max_examples=300, deadline=None)
@given(
    key_id=texts,
    claimed=texts,
    heartbeat=floats,
    sent_at=floats,
    load=floats,
    version=texts,
    tools=st.lists(texts, max_size=200),
    labels=st.dictionaries(texts, texts, max_size=80),
    concurrent=st.integers(0, 2**32 - 1),
)
def test_any_admitted_twin_is_the_keys_device_and_within_every_bound(
    key_id: str,
    claimed: str,
    heartbeat: float,
    sent_at: float,
    load: float,
    version: str,
    tools: list[str],
    labels: dict[str, str],
    concurrent: int,
) -> None:
    t = twin(claimed, heartbeat_s=heartbeat, sent_at=sent_at, load=load, version=version)
    t.max_concurrent = concurrent
    t.tools.extend(tools)
    t.labels.update(labels)
    got = admitted(kv_key(key_id), t, NOW)
    if claimed != key_id:
        assert got is None
        return
    assert got is not None
    assert got.device_id == key_id
    assert 0.0 <= got.heartbeat_s <= bounds.MAX_HEARTBEAT_S
    assert 0.0 <= got.sent_at <= NOW
    assert 0.0 <= got.load <= bounds.MAX_LOAD
    assert got.max_concurrent <= bounds.MAX_CONCURRENT
    assert got.version == "" or bounds.VERSION.match(got.version)
    assert len(got.tools) <= bounds.MAX_TOOLS
    assert all(0 < len(x) <= bounds.MAX_NAME for x in got.tools)
    assert len(got.labels) <= bounds.MAX_LABELS
    assert all(len(k) <= bounds.MAX_NAME and len(v) <= bounds.MAX_TEXT for k, v in got.labels.items())
    assert not is_online(got, NOW + 3 * bounds.MAX_HEARTBEAT_S + 1)
