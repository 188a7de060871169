"""``DiskPressure``: agents paused by a full store wait until there is space again, then come back once."""

from __future__ import annotations

from pathlib import Path

from edgehub.edge.errors import StoreFull
from edgehub.edge.pressure import DiskPressure


def test_paused_agents_come_back_once_when_enough_space_is_free(tmp_path: Path) -> None:
    disk = DiskPressure(tmp_path, resume_free_bytes=2**62)  # more than any disk here has free
    full = StoreFull(path="edge.db", detail="database or disk is full")
    disk.hit("a", full)
    disk.hit("b", full)
    disk.hit("a", full)
    assert disk.full
    assert "full" in disk.reason
    assert not disk.check()
    assert disk.take_resumed() == []
    disk.resume_free_bytes = 1
    assert disk.check()
    assert not disk.full
    assert sorted(p.agent_id for p in disk.take_resumed()) == ["a", "b"]
    assert disk.take_resumed() == []


def test_without_pressure_the_check_does_not_look_at_the_disk(tmp_path: Path) -> None:
    disk = DiskPressure(tmp_path / "absent")
    assert disk.check()
    assert not disk.full


def test_a_folder_that_cannot_be_measured_keeps_the_agents_paused(tmp_path: Path) -> None:
    disk = DiskPressure(tmp_path / "absent", resume_free_bytes=1)
    disk.hit("a", StoreFull(path="edge.db", detail="full"))
    assert not disk.check()
    assert disk.full


def test_under_the_pause_threshold_the_pressure_starts_before_a_write_fails(tmp_path: Path) -> None:
    disk = DiskPressure(tmp_path, resume_free_bytes=2**62, pause_free_bytes=2**61)
    assert disk.low()
    assert disk.full
    assert "nearly full" in disk.reason
    assert "pause_free_mb" in disk.reason
    assert not disk.low()  # already under pressure: entered once
    disk.pause("a")
    disk.pause("a")
    assert list(disk.paused) == ["a"]
    disk.resume_free_bytes = disk.pause_free_bytes = 1
    assert disk.check()
    assert [p.agent_id for p in disk.take_resumed()] == ["a"]
    assert not disk.low()  # plenty free


def test_without_a_pause_threshold_nothing_pauses_before_a_write_fails(tmp_path: Path) -> None:
    disk = DiskPressure(tmp_path, resume_free_bytes=2**62)
    assert not disk.low()
    assert not disk.full
