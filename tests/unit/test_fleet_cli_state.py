"""How ``edgehub devices list/get`` shows a device's state: online, draining, agents paused by a full disk."""

from __future__ import annotations

from edgehub.hub.cli.fleet import _state
from edgehub.protocol.v1 import hub_pb2, twin_pb2


def test_a_device_whose_disk_is_full_is_marked_paused() -> None:
    full = hub_pb2.Device(
        device_id="pi-1",
        online=True,
        twin=twin_pb2.DeviceTwin(paused_reason="the store's file system is full (disk full)"),
    )
    assert _state(full) == "[green]yes[/] (agents paused: disk full)"
    assert _state(hub_pb2.Device(device_id="pi-2", online=True)) == "[green]yes[/]"
