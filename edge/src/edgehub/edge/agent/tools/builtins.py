"""Built-in tools: files and folders in the agent's workspace, commands, notes, and finish.

File tools accept only relative paths that resolve (symlinks included) inside the agent's workspace.
Folders and moves are tools of their own (``make_dir``, ``move_file``, ``list_dir``) rather than only
shell commands: a small model asked to "make a directory" or "rename a file" reaches for a tool named
for the effect, and called ``write_file`` in a loop when none was (issue 18's eval); as tools they are
also judged by the policy on their paths, like ``write_file``, instead of on a parsed command line.
``run_command`` runs through the context's sandbox (``ToolContext.sandbox``: bubblewrap with limits,
see ``edgehub.edge.safety.sandbox``); with no sandbox configured it refuses to run.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from ...jsontypes import JsonObject
from .base import Tool, ToolContext, ToolOutput, ToolSpec

MAX_FILE_CHARS = 64_000

Handler = Callable[[JsonObject, ToolContext], Awaitable[ToolOutput]]


@dataclass(frozen=True, slots=True)
class FunctionTool:
    """A tool made of a spec and an async function."""

    spec: ToolSpec
    handler: Handler

    async def __call__(self, args: JsonObject, ctx: ToolContext) -> ToolOutput:
        return await self.handler(args, ctx)


def _obj(required: list[str], **props: JsonObject) -> JsonObject:
    return {
        "type": "object",
        "properties": {**props},
        "required": [*required],
        "additionalProperties": False,
    }


def _str(max_length: int) -> JsonObject:
    return {"type": "string", "minLength": 1, "maxLength": max_length}


def arg(args: JsonObject, name: str) -> str:
    """The string argument ``name`` (the tool's schema, checked before the call, makes it one)."""
    return str(args[name])


class PathOutsideWorkspace(ValueError):
    pass


def workspace_path(ctx: ToolContext, rel: str) -> Path:
    """Resolve ``rel`` inside the workspace or raise PathOutsideWorkspace."""
    if Path(rel).is_absolute():
        raise PathOutsideWorkspace(f"{rel!r} is absolute; use a path relative to the workspace")
    root = ctx.workspace.resolve()
    target = (root / rel).resolve()
    if not target.is_relative_to(root) or target == root:
        raise PathOutsideWorkspace(f"{rel!r} is outside the workspace")
    return target


async def read_file(args: JsonObject, ctx: ToolContext) -> ToolOutput:
    rel = arg(args, "path")
    try:
        text = workspace_path(ctx, rel).read_text(errors="replace")
    except PathOutsideWorkspace as exc:
        return ToolOutput(str(exc), ok=False, error="outside_workspace")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return ToolOutput(f"no file {rel!r} in the workspace", ok=False, error="not_found")
    if len(text) > MAX_FILE_CHARS:
        text = text[:MAX_FILE_CHARS]
    return ToolOutput(text)


async def write_file(args: JsonObject, ctx: ToolContext) -> ToolOutput:
    rel, content = arg(args, "path"), arg(args, "content")
    try:
        path = workspace_path(ctx, rel)
    except PathOutsideWorkspace as exc:
        return ToolOutput(str(exc), ok=False, error="outside_workspace")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(content)
    os.replace(tmp, path)  # atomic: a crash leaves the old or the new file, never half of one
    return ToolOutput(f"wrote {len(content)} characters to {rel}")


async def run_command(args: JsonObject, ctx: ToolContext, *, timeout_s: float) -> ToolOutput:
    if ctx.sandbox is None:
        return ToolOutput("no sandbox is configured on this device", ok=False, error="unavailable")
    env = {"EDGEHUB_IDEMPOTENCY_KEY": ctx.idempotency_key}
    r = await ctx.sandbox.run(
        arg(args, "command"), ctx.workspace, timeout_s=timeout_s, env=env, network=ctx.network
    )
    if r.killed:
        kind = "timeout" if r.limit == "timeout" else "limit"
        return ToolOutput(f"killed: {r.killed}\n{r.output}", ok=False, error=kind)
    return ToolOutput(f"exit status {r.exit_code}\n{r.output}", ok=r.ok, error="" if r.ok else "exit_status")


async def make_dir(args: JsonObject, ctx: ToolContext) -> ToolOutput:
    rel = arg(args, "path")
    try:
        path = workspace_path(ctx, rel)
        path.mkdir(parents=True, exist_ok=True)
    except PathOutsideWorkspace as exc:
        return ToolOutput(str(exc), ok=False, error="outside_workspace")
    except (FileExistsError, NotADirectoryError):
        return ToolOutput(f"{rel!r} is a file, not a folder", ok=False, error="exists")
    return ToolOutput(f"folder {rel} exists")


async def move_file(args: JsonObject, ctx: ToolContext) -> ToolOutput:
    """Move or rename a file or folder; the destination must not exist (nothing is overwritten)."""
    rel, to = arg(args, "path"), arg(args, "to")
    try:
        source, target = workspace_path(ctx, rel), workspace_path(ctx, to)
    except PathOutsideWorkspace as exc:
        return ToolOutput(str(exc), ok=False, error="outside_workspace")
    if target.is_dir() and not source.is_dir():  # "move a.txt to archive": into the folder
        target = target / source.name
    if not source.exists():
        return ToolOutput(f"no file {rel!r} in the workspace", ok=False, error="not_found")
    if target.exists():
        return ToolOutput(f"{to!r} already exists; nothing was moved", ok=False, error="exists")
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(source, target)  # atomic within the workspace's file system
    return ToolOutput(f"moved {rel} to {target.relative_to(ctx.workspace.resolve())}")


MAX_LISTED = 200


async def list_dir(args: JsonObject, ctx: ToolContext) -> ToolOutput:
    """The names in a folder of the workspace (``.`` or nothing: the workspace), folders ending in /."""
    rel = str(args.get("path", ".") or ".")
    try:
        path = ctx.workspace.resolve() if rel in (".", "./") else workspace_path(ctx, rel)
        entries = sorted(path.iterdir())
    except PathOutsideWorkspace as exc:
        return ToolOutput(str(exc), ok=False, error="outside_workspace")
    except (FileNotFoundError, NotADirectoryError):
        return ToolOutput(f"no folder {rel!r} in the workspace", ok=False, error="not_found")
    names = [e.name + ("/" if e.is_dir() else "") for e in entries if not e.name.startswith(".")]
    if not names:
        return ToolOutput("the folder is empty")
    more = f"\n... and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
    return ToolOutput(f"{len(names)} entries\n" + "\n".join(names[:MAX_LISTED]) + more)


RECALL_EPISODES = 3


async def remember(args: JsonObject, ctx: ToolContext) -> ToolOutput:
    key, value = arg(args, "key"), arg(args, "value")
    ctx.notes.put_note(ctx.agent_id, key, value)
    if ctx.memory is not None:  # also an L3 episode, so recall finds it by meaning, not only by key
        await ctx.memory.remember(ctx.agent_id, f"{key}: {value}", 0.8, ctx.step)
    return ToolOutput(f"remembered {key}")


async def recall(args: JsonObject, ctx: ToolContext) -> ToolOutput:
    """The note under that exact key; else notes matching the words, then L3 memories by meaning."""
    query = arg(args, "query")
    exact = ctx.notes.get_note(ctx.agent_id, query)
    if exact is not None:
        return ToolOutput(f"{query}: {exact}")
    lines = [f"{k}: {v}" for k, v in ctx.notes.search_notes(ctx.agent_id, query)]
    if ctx.memory is not None:
        for text in await ctx.memory.recall_texts(query, RECALL_EPISODES, ctx.agent_id):
            if text not in lines:
                lines.append(text)
    if not lines:
        return ToolOutput(f"nothing remembered about {query!r}")
    return ToolOutput("\n".join(lines))


async def knowledge(args: JsonObject, ctx: ToolContext) -> ToolOutput:
    if ctx.knowledge is None:
        return ToolOutput("this device has no hub to ask", ok=False, error="unavailable")
    return await ctx.knowledge.ask(ctx.agent_id, arg(args, "about"))


def knowledge_tool(*, timeout_s: float) -> Tool:
    """The ``knowledge`` tool: offered only on devices with a hub (the daemon adds it)."""
    spec = ToolSpec(
        "knowledge",
        "Ask the fleet's shared knowledge about a thing: a device, a site, a part.",
        _obj(["about"], about=_str(128)),
        idempotent=True,
        repeatable=True,
        timeout_s=timeout_s + 5,
        example={"about": "line 3"},
    )
    return FunctionTool(spec, knowledge)


async def finish(args: JsonObject, ctx: ToolContext) -> ToolOutput:
    return ToolOutput(arg(args, "answer"), finish=True)


WRITE_FILE = ToolSpec(
    "write_file",
    "Write text to a file in the workspace.",
    _obj(["path", "content"], path=_str(128), content=_str(2000)),
    idempotent=True,
    repeatable=True,
    example={"path": "notes.txt", "content": "hello"},
)
READ_FILE = ToolSpec(
    "read_file",
    "Read a text file from the workspace.",
    _obj(["path"], path=_str(128)),
    idempotent=True,
    repeatable=True,
    example={"path": "notes.txt"},
)
MAKE_DIR = ToolSpec(
    "make_dir",
    "Create a folder (directory) in the workspace.",
    _obj(["path"], path=_str(128)),
    idempotent=True,
    repeatable=True,
    example={"path": "reports"},
)
MOVE_FILE = ToolSpec(
    "move_file",
    "Move or rename a file or folder in the workspace.",
    _obj(["path", "to"], path=_str(128), to=_str(128)),
    idempotent=False,  # after a crash mid-call the source is gone: a second try fails, it does not redo
    repeatable=False,
    example={"path": "old.txt", "to": "new.txt"},
)
LIST_DIR = ToolSpec(
    "list_dir",
    'List the files and folders in a workspace folder ("." is the workspace itself).',
    _obj(["path"], path=_str(128)),
    idempotent=True,
    repeatable=True,
    example={"path": "."},
)
REMEMBER = ToolSpec(
    "remember",
    "Store a note under a key for later steps.",
    _obj(["key", "value"], key=_str(64), value=_str(500)),
    idempotent=True,
    repeatable=False,  # the note is replaced, but each call also adds an L3 episode
    example={"key": "door code", "value": "4417"},
)
RECALL = ToolSpec(
    "recall",
    "Look up notes stored with remember.",
    _obj(["query"], query=_str(128)),
    idempotent=True,
    repeatable=True,
    example={"query": "door code"},
)
FINISH = ToolSpec(
    "finish",
    "Finish the goal with the answer.",
    _obj(["answer"], answer=_str(500)),
    idempotent=True,
    repeatable=True,
    example={"answer": "42"},
)


def run_command_spec(timeout_s: float) -> ToolSpec:
    """``run_command``'s spec, for commands killed after ``timeout_s`` (the call gets 5 s more)."""
    return ToolSpec(
        "run_command",
        "Run a shell command in the workspace and see its exit status and output.",
        _obj(["command"], command=_str(500)),
        idempotent=False,
        repeatable=False,
        runs_code=True,
        timeout_s=timeout_s + 5,
        example={"command": "ls -l"},
    )


def builtin_tools(*, command_timeout_s: float = 20.0) -> list[Tool]:
    """The built-in tools, in the order the prompt lists them."""

    async def run_command_bound(args: JsonObject, ctx: ToolContext) -> ToolOutput:
        return await run_command(args, ctx, timeout_s=command_timeout_s)

    specs: list[tuple[ToolSpec, Handler]] = [
        (WRITE_FILE, write_file),
        (READ_FILE, read_file),
        (LIST_DIR, list_dir),
        (MAKE_DIR, make_dir),
        (MOVE_FILE, move_file),
        (run_command_spec(command_timeout_s), run_command_bound),
        (REMEMBER, remember),
        (RECALL, recall),
        (FINISH, finish),
    ]
    return [FunctionTool(spec, handler) for spec, handler in specs]
