"""Operators' mistakes through the real CLI: bad config, missing or corrupt model, bad goals and ids; clear
errors (one line), exit 2; and read-only commands that create nothing."""

from __future__ import annotations

import ctypes
import json
import socket
import subprocess
from pathlib import Path

import pytest

from edgehub.llm import default_model_path
from tests.harness.cli import edgehub


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[model]\nn_ctx = 'lots'\n", "model.n_ctx"),
        ("[tools]\nenabeld = []\n", "tools.enabeld"),
        ("[model\n", "not valid TOML"),
    ],
)
def test_bad_config_is_reported_with_the_key(tmp_path: Path, toml: str, expected: str) -> None:
    (tmp_path / "edge.toml").write_text(toml)
    for args in (["edge", "config"], ["edge", "run"], ["agent", "run", "--goal", "x"]):
        done = edgehub(*args, "-c", str(tmp_path / "edge.toml"), data_dir=tmp_path / "d")
        assert done.returncode == 2, done.stderr
        assert expected in done.stderr
        assert "Traceback" not in done.stderr


def test_missing_model_file_is_a_clear_error(tmp_path: Path) -> None:
    env = {"EDGEHUB_EDGE__MODEL__PATH": str(tmp_path / "nope.gguf")}
    done = edgehub("agent", "run", "--goal", "x", data_dir=tmp_path / "d", env=env)
    assert done.returncode == 2
    assert "nope.gguf" in done.stderr
    assert "not found" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("kind", ["random", "truncated"])
def test_corrupt_model_file_is_a_clear_error(tmp_path: Path, kind: str) -> None:
    bad = tmp_path / "bad.gguf"
    if kind == "random":
        bad.write_bytes(b"\x00garbage" * 4096)
    else:
        with default_model_path().open("rb") as src, bad.open("wb") as dst:
            dst.write(src.read(1 << 20))  # a real GGUF header, cut after 1 MiB
    done = edgehub(
        "agent", "run", "--goal", "x", data_dir=tmp_path / "d", env={"EDGEHUB_EDGE__MODEL__PATH": str(bad)}
    )
    assert done.returncode == 2, done.stderr[-1500:]
    assert "bad.gguf" in done.stderr
    assert "Traceback" not in done.stderr


def test_second_daemon_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    from edgehub.edge.datadir import DaemonLock

    lock = DaemonLock(tmp_path)
    lock.acquire()
    try:
        assert DaemonLock.held(tmp_path)
        done = edgehub("edge", "run", data_dir=tmp_path)
        assert done.returncode == 2
        assert "another edge daemon" in done.stderr
    finally:
        lock.release()
    assert not DaemonLock.held(tmp_path)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (None, "policy file not found"),
        ("version = 1\n[[rules]]\nid = 'x'\ntools = ['*']\neffect = 'allow-all'\n", "rules.0.effect"),
        ("version = 1\n[[rules]\n", "not valid TOML"),
    ],
)
def test_a_missing_or_broken_policy_stops_the_daemon_with_a_clear_error(
    tmp_path: Path, policy: str | None, expected: str
) -> None:
    path = tmp_path / "policy.toml"
    if policy is not None:
        path.write_text(policy)
    env = {"EDGEHUB_EDGE__SAFETY__POLICY": str(path)}
    for args in (["edge", "run"], ["agent", "run", "--goal", "x"], ["policy", "check"]):
        done = edgehub(*args, data_dir=tmp_path / "d", env=env)
        assert done.returncode == 2, done.stderr
        assert expected in done.stderr
        assert "policy.toml" in done.stderr
        assert "Traceback" not in done.stderr


def test_policy_try_shows_the_deciding_rule(tmp_path: Path) -> None:
    allowed = edgehub("policy", "try", "run_command", '{"command": "ls"}', data_dir=tmp_path)
    assert allowed.returncode == 0
    assert "allow (rule sandboxed-commands)" in allowed.stdout
    held = edgehub("policy", "try", "run_command", '{"command": "rm -rf data"}', data_dir=tmp_path)
    assert held.returncode == 1
    assert "needs_approval (rule destructive-commands)" in held.stdout
    bad = edgehub("policy", "try", "run_command", "{oops", data_dir=tmp_path)
    assert bad.returncode == 2
    assert "not valid JSON" in bad.stderr


# --- issue 19: every input error is one line and exit status 2; read-only commands create nothing ---


def _drop_file_capabilities() -> None:
    """In the child: without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH even root obeys a file's mode (as
    a user without them, the drop fails and is not needed)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP: root's next exec gets only the bounding set


def _bad_config(tmp_path: Path, kind: str) -> tuple[Path, str]:
    """A config path that cannot be loaded, and the words its error must hold."""
    path = tmp_path / f"{kind}.toml"
    if kind == "not-utf8":
        path.write_bytes(b"[device]\nid = '\xff\xfe'\n")
        return path, "not UTF-8 text (invalid start byte at byte 15)"
    if kind == "folder":
        path.mkdir()
        return path, "is a folder, not a TOML file"
    if kind == "missing":
        return path, "file not found"
    if kind == "unreadable":
        path.write_text("[device]\nid = 'x'\n")
        path.chmod(0)
        return path, "not readable (permission denied)"
    if kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
        return path, "cannot read it (No such device or address)"
    assert kind == "endless"
    return Path("/dev/zero"), "over 1,048,576 bytes: not a config file"


def _one_error_line(done: subprocess.CompletedProcess[str], *expected: str) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout[-500:], done.stderr[-2000:])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    for words in expected:
        assert words in lines[0]
    return lines[0]


@pytest.mark.parametrize("kind", ["not-utf8", "folder", "missing", "unreadable", "socket", "endless"])
def test_a_config_that_cannot_be_read_is_one_error_line_for_edge_and_hub_commands(
    tmp_path: Path, kind: str
) -> None:
    path, expected = _bad_config(tmp_path, kind)
    data = tmp_path / "d"
    for args in (["edge", "config"], ["agent", "list"], ["hub", "run"]):
        done = edgehub(*args, "-c", str(path), data_dir=data, preexec_fn=_drop_file_capabilities)
        _one_error_line(done, str(path), expected)
    assert not data.exists()


BIG = "the pump in hall 5 " * 6_000  # 114,000 characters: a goal too long for any context we run


@pytest.mark.parametrize(
    ("args", "stdin", "file", "expected"),
    [
        (["--goal", ""], None, None, "the goal is empty"),
        (["--goal", " \t "], None, None, "the goal is only whitespace"),
        (["--goal", "-"], "\n  \n", None, "the goal is only whitespace"),
        (["--goal", "a" * 4001], None, None, "the goal is 4,001 characters; at most 4,000"),
        (["--goal", BIG], None, None, "the goal is 113,999 characters; at most 4,000"),
        (["--goal", "-"], "x" * 1_000_000, None, "the goal in standard input is over 16,000 bytes"),
        (["--goal-file"], None, "x" * 1_000_000, "goal.txt is over 16,000 bytes, so over 4,000 characters"),
        (["--goal-file"], None, b"count \xc3(", "goal.txt is not UTF-8 text (invalid continuation byte"),
        (["--goal-file"], None, "say\x07hi", "control character (U+0007 at character 4)"),
        (["--goal-file"], None, "", "the goal is empty"),
        ([], None, None, "no goal: give one of --goal TEXT, --goal - (standard input) or --goal-file PATH"),
        (["--goal", "x", "--goal-file"], None, "y", "both --goal and --goal-file"),
    ],
)
def test_a_goal_that_cannot_be_run_is_one_error_line_and_nothing_is_created(
    tmp_path: Path, args: list[str], stdin: str | None, file: str | bytes | None, expected: str
) -> None:
    if file is not None:
        goal = tmp_path / "goal.txt"
        goal.write_bytes(file.encode() if isinstance(file, str) else file)
        args = [*args, str(goal)]
    done = edgehub("agent", "run", *args, data_dir=tmp_path / "d", stdin=stdin)
    _one_error_line(done, expected)
    assert not (tmp_path / "d").exists()


def test_a_goal_file_that_is_missing_or_a_folder_is_one_error_line(tmp_path: Path) -> None:
    done = edgehub("agent", "run", "--goal-file", str(tmp_path / "nope.txt"), data_dir=tmp_path / "d")
    _one_error_line(done, "nope.txt: not found")
    done = edgehub("agent", "run", "--goal-file", str(tmp_path), data_dir=tmp_path / "d")
    _one_error_line(done, "is a folder, not a file")


@pytest.mark.parametrize(
    "args",
    [
        ["agent", "trace", "bad id!"],
        ["pii", "outgoing", "../x"],
        ["approvals", "decide", "a1/x", "--approve"],
    ],
)
def test_a_bad_id_is_one_error_line(tmp_path: Path, args: list[str]) -> None:
    done = edgehub(*args, data_dir=tmp_path / "d")
    _one_error_line(done)
    assert not (tmp_path / "d").exists()


READ_ONLY = [
    (["agent", "list"], 0, "no agents on this device"),
    (["agent", "list", "--json"], 0, ""),
    (["agent", "trace", "agent-1"], 1, "error: no agent 'agent-1' on this device"),
    (["approvals", "list"], 0, "no pending approvals on this device"),
    (["approvals", "list", "--all", "--json"], 0, ""),
    (["pii", "outgoing", "agent-1"], 0, ""),
]


@pytest.mark.parametrize("made", [False, True], ids=["missing-data-dir", "empty-data-dir"])
def test_read_only_commands_on_an_empty_device_say_so_and_create_nothing(tmp_path: Path, made: bool) -> None:
    data = tmp_path / "d"
    if made:
        data.mkdir()
    for args, code, said in READ_ONLY:
        done = edgehub(*args, data_dir=data)
        assert done.returncode == code, (args, done.stderr)
        assert done.stdout == ""
        assert done.stderr.strip() == said, args
    unmasked = edgehub("pii", "unmask", "hi <EMAIL_abcdefghij>", data_dir=data)
    assert (unmasked.returncode, unmasked.stdout) == (0, "hi <EMAIL_abcdefghij>\n")
    assert list(data.iterdir()) == [] if made else not data.exists()


def test_read_only_commands_read_an_existing_store_without_changing_it(tmp_path: Path) -> None:
    from edgehub.edge.agent.loop import new_agent
    from edgehub.edge.store.sqlite import SqliteStore

    data = tmp_path / "d"
    store = SqliteStore.open(data / "edge.db", device_id="local")
    store.create_agent(new_agent("agent-1", "count the pumps"))
    store.close()
    before, files = (data / "edge.db").read_bytes(), {p.name for p in data.iterdir()}
    listed = edgehub("agent", "list", "--json", data_dir=data)
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(line)["agent_id"] for line in listed.stdout.splitlines()] == ["agent-1"]
    traced = edgehub("agent", "trace", "agent-1", "--json", data_dir=data)
    assert traced.returncode == 0, traced.stderr
    assert json.loads(traced.stdout.splitlines()[-1])["agent"]["goal"] == "count the pumps"
    assert edgehub("approvals", "list", data_dir=data).returncode == 0
    assert (data / "edge.db").read_bytes() == before
    assert {p.name for p in data.iterdir()} - files <= {"edge.db-wal", "edge.db-shm"}  # no vault.key


# --- with the real model: the context check, and llama.cpp's own log only with --verbose ---

N_CTX = {"EDGEHUB_EDGE__MODEL__N_CTX": "2048"}


@pytest.mark.model
@pytest.mark.parametrize("verbose", [False, True])
def test_a_goal_within_the_limit_but_over_the_context_is_one_error_line_before_any_step(
    tmp_path: Path, verbose: bool
) -> None:
    goal = " ".join(str(n) for n in range(10_000, 10_660))  # 3,959 characters, about 4,000 tokens
    assert len(goal) <= 4000
    (tmp_path / "goal.txt").write_text(goal)
    args = ["agent", "run", "--goal-file", str(tmp_path / "goal.txt"), *(["--verbose"] if verbose else [])]
    done = edgehub(*args, data_dir=tmp_path / "d", env=N_CTX)
    assert done.returncode == 2, done.stderr[-2000:]
    error = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1
    assert "tokens; the model's context of 2,048 tokens leaves" in error[0]
    assert "Traceback" not in done.stderr
    if verbose:
        assert "llama_model_loader: loaded meta data" in done.stderr
        assert "llama_kv_cache" in done.stderr
    else:
        assert done.stderr.splitlines() == error  # nothing of llama.cpp's


@pytest.mark.model
def test_a_goal_from_stdin_runs_with_pure_json_on_stdout_and_no_llama_lines(tmp_path: Path) -> None:
    done = edgehub(
        "agent", "run", "--goal", "-", "--json", "--max-steps", "1",
        data_dir=tmp_path / "d", env=N_CTX, stdin="\n  Write the word blue into a.txt.  \n",
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines
    assert all(isinstance(x, dict) for x in lines)
    assert lines[-1]["agent"]["goal"] == "Write the word blue into a.txt."
    assert "llama" not in done.stderr, done.stderr[-2000:]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (("agent", "run", "--bogus"), "error: edgehub agent run: No such option: --bogus"),
        (("agent", "trace"), "error: edgehub agent trace: Missing argument 'agent_id'"),
        (("agent", "run", "--goal", "x", "--max-steps", "many"), "error: edgehub agent run: Invalid value"),
        (("no-such-area",), "error: edgehub: No such command 'no-such-area'"),
    ],
)
def test_a_usage_error_is_one_line_naming_the_command(
    tmp_path: Path, argv: tuple[str, ...], expected: str
) -> None:
    done = edgehub(*argv, data_dir=tmp_path / "data")
    assert done.returncode == 2, done
    assert done.stderr.startswith(expected), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr  # no traceback
    assert "╭" not in done.stderr, done.stderr  # no box
    assert not (tmp_path / "data").exists()
