"""The edge store going back in time, as a tester found it: a daemon killed mid-goal (its last steps only
in ``edge.db-wal``), then the WAL truncated to zero or to half, or the last pages of ``edge.db``
overwritten. Each is caught at open, nothing resumes, and the CLI says why and how to recover.

The daemon is real (``tests.harness.edge_proc``: the real store, loop, sandbox and tools) with a scripted
brain: every step appends its number to ``tally.txt`` through ``run_command``, a side effect that must not
be repeated without an operator accepting it.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
from pathlib import Path
from typing import Any

import apsw
import pytest

from edgehub.edge.agent.loop import new_agent
from edgehub.edge.store.sqlite import SqliteStore
from edgehub.edge.store.sqlite.store import RESUMABLE
from edgehub.protocol.v1 import agent_pb2
from tests.harness.cli import edgehub
from tests.harness.edge_proc import agent_state, start_edge, stop_edges
from tests.harness.wait import assert_eventually

S = agent_pb2
STEPS = 8
"""The scripted agent appends 1 to 7, then finishes (the prompt numbers steps from 1)."""
SCRIPT = "tests.integration.test_store_rollback:brain"
AGENT = "tally-1"


def brain(prompt: str) -> str:
    step = int(re.findall(r"Step (\d+) action: $", prompt)[-1]) if prompt.endswith("action: ") else 0
    if step >= STEPS:
        return json.dumps({"thought": "done", "tool": "finish", "args": {"answer": "counted"}})
    command = f"echo {step} >> tally.txt"
    return json.dumps({"thought": f"count {step}", "tool": "run_command", "args": {"command": command}})


def _config(data_dir: Path) -> dict[str, Any]:
    return {
        "device": {"id": "dev-1", "data_dir": str(data_dir)},
        "tools": {"load_entry_points": False},
        "memory": {"episodic": False},
        "safety": {"stuck_warnings": 100, "failing_repeats": 100},
        "agent": {"max_steps": 100, "max_tool_calls": 100},
        "store": {"checkpoint_s": 3600},  # the kill must leave the last steps only in the WAL
    }


def _env(data_dir: Path) -> dict[str, str]:
    """The CLI on the same data dir, device and tools as the daemon."""
    return {
        "EDGEHUB_EDGE__DEVICE__ID": "dev-1",
        "EDGEHUB_EDGE__TOOLS__LOAD_ENTRY_POINTS": "false",
        "EDGEHUB_EDGE__MEMORY__EPISODIC": "false",
        "EDGEHUB_EDGE__AGENT__MAX_STEPS": "100",
    }


def _tally(data_dir: Path) -> list[str]:
    path = data_dir / "workspaces" / AGENT / "tally.txt"
    return path.read_text().split() if path.exists() else []


def _killed_after_step_4(data_dir: Path) -> None:
    """A daemon SIGKILLed right after committing the agent's step 4 (its 5th: tally 1 to 5)."""
    store = SqliteStore.open(data_dir / "edge.db", device_id="dev-1")
    store.create_agent(new_agent(AGENT, "Count to seven in tally.txt."))
    store.close()
    edge = start_edge(_config(data_dir), SCRIPT, env={"EDGEHUB_FAILPOINTS": "after_checkpoint@4"})
    assert edge.wait(timeout=120) == -signal.SIGKILL, (data_dir / "edge.log").read_text()[-2000:]
    assert _tally(data_dir) == ["1", "2", "3", "4", "5"]
    assert (data_dir / "edge.db-wal").stat().st_size > 0


def _assert_refused(data_dir: Path, why: str) -> None:
    """Nothing resumes, the CLI says why in one line, and the tally is what the lost steps left."""
    before = _tally(data_dir)
    run = edgehub("edge", "run", "--until-idle", data_dir=data_dir, env=_env(data_dir))
    assert run.returncode == 2, run.stderr[-2000:]
    assert why in run.stderr, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert _tally(data_dir) == before
    listed = edgehub("agent", "list", data_dir=data_dir, env=_env(data_dir))
    assert why in listed.stderr, listed.stderr[-2000:]
    assert "Traceback" not in listed.stderr


@pytest.mark.parametrize("keep", [0.0, 0.5], ids=["wal-truncated-to-zero", "wal-truncated-to-half"])
def test_a_truncated_wal_is_caught_nothing_resumes_until_the_loss_is_accepted(
    tmp_path: Path, keep: float
) -> None:
    _killed_after_step_4(tmp_path)
    wal = tmp_path / "edge.db-wal"
    os.truncate(wal, int(wal.stat().st_size * keep))

    _assert_refused(tmp_path, "rolled back")
    doctor = edgehub("edge", "doctor", "--store", data_dir=tmp_path, env=_env(tmp_path))
    assert doctor.returncode == 1, doctor.stdout
    assert "store rollback" in doctor.stdout
    assert "--accept-rollback" in doctor.stdout

    accepted = edgehub(
        "edge",
        "doctor",
        "--store",
        "--accept-rollback",
        "--by",
        "tester",
        data_dir=tmp_path,
        env=_env(tmp_path),
    )
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "rollback accepted by tester" in accepted.stdout
    store = SqliteStore.open(tmp_path / "edge.db", device_id="dev-1")
    try:
        assert store.rolled_back is None
        ((by, agents),) = store._rows("SELECT accepted_by, agents FROM rollbacks")
        assert by == "tester"
        kept = store.list_agents()
        assert json.loads(agents) == [a.agent_id for a in kept if a.status in RESUMABLE]
    finally:
        store.close()
    if not kept:  # the whole WAL went: the agent went with it; nothing left to resume
        return
    assert kept[0].step < 5  # resumes from an older checkpoint, as accepted
    edge = start_edge(_config(tmp_path), SCRIPT)
    try:
        done = assert_eventually(
            lambda: (s := agent_state(tmp_path, AGENT)) is not None and s.status == S.AGENT_STATUS_FINISHED,
            timeout=120,
            what=lambda: (tmp_path / "edge.log").read_text()[-2000:],
        )
        assert done
    finally:
        stop_edges([edge])
    assert _tally(tmp_path)[-1] == str(STEPS - 1)


def test_overwritten_pages_of_the_database_are_a_clear_error_naming_the_file(tmp_path: Path) -> None:
    _killed_after_step_4(tmp_path)
    db = tmp_path / "edge.db"
    conn = apsw.Connection(str(db))  # what a clean stop does: the WAL copied into the file
    conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
    conn.close()
    size = db.stat().st_size
    with db.open("r+b") as f:
        f.seek(size - 3 * 4096)
        f.write(random.Random(7).randbytes(3 * 4096))

    _assert_refused(tmp_path, f"store {db}: damaged")
    doctor = edgehub("edge", "doctor", "--store", data_dir=tmp_path, env=_env(tmp_path))
    assert doctor.returncode == 1, doctor.stdout
    assert "store integrity" in doctor.stdout
    assert "MISSING" in doctor.stdout
