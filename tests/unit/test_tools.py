"""Built-in tools, the registry and the action schema."""

from __future__ import annotations

import asyncio
import os
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from edgehub.edge.agent.tools import (
    FunctionTool,
    ToolContext,
    ToolOutput,
    ToolRegistry,
    ToolSpec,
    builtin_tools,
)
from edgehub.edge.agent.tools import registry as registry_mod
from edgehub.edge.config import ToolsConfig
from edgehub.edge.errors import ToolError
from edgehub.edge.safety import HostRunner
from edgehub.edge.store import SqliteStore


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    ws = tmp_path / "ws"
    ws.mkdir()
    notes = SqliteStore.open(tmp_path / "e.db", device_id="d")
    return ToolContext(
        agent_id="a1", step=0, idempotency_key="a1/0", workspace=ws, notes=notes, sandbox=HostRunner()
    )


async def call(name: str, ctx: ToolContext, **args: object) -> ToolOutput:
    tools = {t.spec.name: t for t in builtin_tools(command_timeout_s=2)}
    return await tools[name](args, ctx)


async def test_write_then_read_round_trips_inside_the_workspace(ctx: ToolContext) -> None:
    assert (await call("write_file", ctx, path="sub/a.txt", content="héllo")).ok
    out = await call("read_file", ctx, path="sub/a.txt")
    assert (out.ok, out.output) == (True, "héllo")
    assert not list(ctx.workspace.rglob(".*.tmp"))


@pytest.mark.parametrize("path", ["../escape.txt", "/etc/passwd", "sub/../../escape.txt", "link/x.txt"])
async def test_file_tools_refuse_paths_outside_the_workspace(ctx: ToolContext, path: str) -> None:
    (ctx.workspace / "link").symlink_to(ctx.workspace.parent)
    wrote = await call("write_file", ctx, path=path, content="x")
    read = await call("read_file", ctx, path=path)
    assert (wrote.ok, wrote.error) == (False, "outside_workspace")
    assert (read.ok, read.error) == (False, "outside_workspace")
    assert not (ctx.workspace.parent / "escape.txt").exists()
    assert not (ctx.workspace.parent / "x.txt").exists()


async def test_make_dir_creates_a_folder_and_says_so_again_for_one_that_exists(ctx: ToolContext) -> None:
    first = await call("make_dir", ctx, path="archive/2026")
    again = await call("make_dir", ctx, path="archive/2026")
    assert (first.ok, again.ok) == (True, True)
    assert (ctx.workspace / "archive" / "2026").is_dir()
    (ctx.workspace / "plain.txt").write_text("x")
    clash = await call("make_dir", ctx, path="plain.txt")
    assert (clash.ok, clash.error) == (False, "exists")


async def test_move_file_renames_moves_into_a_folder_and_never_overwrites(ctx: ToolContext) -> None:
    (ctx.workspace / "draft.txt").write_text("v3")
    (ctx.workspace / "keep.txt").write_text("keep")
    assert (await call("move_file", ctx, path="draft.txt", to="final.txt")).ok
    assert (ctx.workspace / "final.txt").read_text() == "v3"
    assert not (ctx.workspace / "draft.txt").exists()
    (ctx.workspace / "old").mkdir()
    into = await call("move_file", ctx, path="final.txt", to="old")
    assert (into.ok, into.output) == (True, "moved final.txt to old/final.txt")
    (ctx.workspace / "b.txt").write_text("b")
    clash = await call("move_file", ctx, path="b.txt", to="keep.txt")
    assert (clash.ok, clash.error) == (False, "exists")
    assert (ctx.workspace / "keep.txt").read_text() == "keep"
    gone = await call("move_file", ctx, path="draft.txt", to="x.txt")
    assert (gone.ok, gone.error) == (False, "not_found")


async def test_list_dir_lists_names_with_folders_marked_and_hidden_files_left_out(ctx: ToolContext) -> None:
    (ctx.workspace / "b.log").write_text("x")
    (ctx.workspace / "a.log").write_text("x")
    (ctx.workspace / ".a.log.tmp").write_text("x")
    (ctx.workspace / "sub").mkdir()
    out = await call("list_dir", ctx, path=".")
    assert (out.ok, out.output) == (True, "3 entries\na.log\nb.log\nsub/")
    assert (await call("list_dir", ctx, path="sub")).output == "the folder is empty"
    assert (await call("list_dir", ctx, path="nope")).error == "not_found"


@pytest.mark.parametrize(
    ("tool", "args"),
    [
        ("make_dir", {"path": "../out"}),
        ("move_file", {"path": "a.txt", "to": "../a.txt"}),
        ("move_file", {"path": "../../etc/hostname", "to": "h.txt"}),
        ("list_dir", {"path": ".."}),
        ("list_dir", {"path": "link"}),
    ],
)
async def test_folder_tools_refuse_paths_outside_the_workspace(
    ctx: ToolContext, tool: str, args: dict[str, str]
) -> None:
    (ctx.workspace / "a.txt").write_text("a")
    (ctx.workspace / "link").symlink_to(ctx.workspace.parent)
    out = await call(tool, ctx, **args)
    assert (out.ok, out.error) == (False, "outside_workspace")
    assert (ctx.workspace / "a.txt").exists()
    assert not (ctx.workspace.parent / "out").exists()
    assert not (ctx.workspace.parent / "a.txt").exists()


async def test_reading_a_missing_file_is_a_not_found_observation(ctx: ToolContext) -> None:
    out = await call("read_file", ctx, path="nope.txt")
    assert (out.ok, out.error) == (False, "not_found")


async def test_run_command_reports_exit_status_and_output(ctx: ToolContext) -> None:
    ok = await call("run_command", ctx, command="echo hi; echo err >&2")
    bad = await call("run_command", ctx, command="exit 3")
    assert ok.ok
    assert "exit status 0" in ok.output
    assert "hi" in ok.output
    assert "err" in ok.output
    assert (bad.ok, bad.error) == (False, "exit_status")


async def test_run_command_does_not_see_the_daemons_environment(ctx: ToolContext) -> None:
    os.environ["EDGEHUB_TEST_SECRET"] = "s3cret"
    try:
        out = await call("run_command", ctx, command="env")
    finally:
        del os.environ["EDGEHUB_TEST_SECRET"]
    assert "s3cret" not in out.output
    assert "EDGEHUB_IDEMPOTENCY_KEY=a1/0" in out.output


async def test_run_command_without_a_sandbox_refuses_to_run(ctx: ToolContext, tmp_path: Path) -> None:
    bare = ToolContext("a1", 0, "a1/0", ctx.workspace, ctx.notes)
    out = await call("run_command", bare, command="touch made")
    assert (out.ok, out.error) == (False, "unavailable")
    assert not (ctx.workspace / "made").exists()


async def test_run_command_timeout_kills_the_whole_process_group(ctx: ToolContext) -> None:
    out = await call("run_command", ctx, command="(sleep 30 & echo $! > child.pid; wait)")
    assert (out.ok, out.error) == (False, "timeout")
    pid = int((ctx.workspace / "child.pid").read_text())
    await asyncio.sleep(0.1)
    assert not _running(pid)


def _running(pid: int) -> bool:
    """Alive and not a zombie (a killed orphan may wait a while for init to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_remember_and_recall(ctx: ToolContext) -> None:
    await call("remember", ctx, key="door code", value="4417")
    assert (await call("recall", ctx, query="door code")).output == "door code: 4417"
    assert "4417" in (await call("recall", ctx, query="door")).output
    assert "nothing remembered" in (await call("recall", ctx, query="cat")).output


async def test_finish_marks_the_agent_done(ctx: ToolContext) -> None:
    out = await call("finish", ctx, answer="42")
    assert out.finish
    assert out.output == "42"


def _noop(name: str, params: dict[str, object] | None = None) -> FunctionTool:
    async def handler(args: dict[str, object], ctx: ToolContext) -> ToolOutput:
        return ToolOutput("ok")

    schema = params if params is not None else {"type": "object", "properties": {}}
    return FunctionTool(ToolSpec(name, "does nothing", schema, idempotent=True), handler)


@pytest.mark.parametrize(
    ("tool", "message"),
    [
        (_noop("Bad-Name"), "name must match"),
        (_noop("arr", {"type": "array"}), '"type": "object"'),
        (
            _noop("bad_schema", {"type": "object", "properties": {"x": {"type": "nonsense"}}}),
            "invalid parameters",
        ),
    ],
)
def test_registry_rejects_bad_tools(tool: FunctionTool, message: str) -> None:
    with pytest.raises(ToolError, match=message):
        ToolRegistry([tool])


def test_registry_rejects_duplicates_and_unknown_enabled_names() -> None:
    with pytest.raises(ToolError, match="twice"):
        ToolRegistry([_noop("x"), _noop("x")])
    with pytest.raises(ToolError, match="not registered"):
        ToolRegistry.default(ToolsConfig(enabled=["read_file", "teleport"], load_entry_points=False))


def test_enabled_list_filters_and_orders_tools() -> None:
    reg = ToolRegistry.default(ToolsConfig(enabled=["finish", "read_file"], load_entry_points=False))
    assert reg.names() == ["finish", "read_file"]


def test_entry_point_tools_are_loaded_and_broken_plugins_named(monkeypatch: pytest.MonkeyPatch) -> None:
    good = EntryPoint("mine", "tests.unit.test_tools:_plugin_factory", "edgehub.tools")
    broken = EntryPoint("broken", "tests.unit.test_tools:_missing", "edgehub.tools")
    monkeypatch.setattr(registry_mod, "entry_points", lambda group: [good])
    reg = ToolRegistry()
    reg.load_entry_points()
    assert reg.names() == ["plugin_noop"]
    monkeypatch.setattr(registry_mod, "entry_points", lambda group: [broken])
    with pytest.raises(ToolError, match="broken"):
        ToolRegistry().load_entry_points()


def _plugin_factory() -> list[FunctionTool]:
    return [_noop("plugin_noop")]


def test_action_schema_accepts_valid_actions_and_rejects_others() -> None:
    reg = ToolRegistry.default(ToolsConfig(load_entry_points=False))
    v = Draft202012Validator(reg.action_schema())
    assert v.is_valid({"thought": "t", "tool": "read_file", "args": {"path": "a"}})
    assert not v.is_valid({"thought": "t", "tool": "teleport", "args": {}})
    assert not v.is_valid({"thought": "t", "tool": "read_file", "args": {"path": 3}})
    assert not v.is_valid({"thought": "t", "tool": "read_file", "args": {"path": "a"}, "extra": 1})
