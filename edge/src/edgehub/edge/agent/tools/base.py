"""The tool interface: what a tool declares, what it receives and what it returns.

A tool is any object with a ``spec`` and an async ``__call__``. Built-ins live in ``builtins.py``;
third-party tools are found through the ``edgehub.tools`` entry point group (each entry point names a
zero-argument factory returning a tool, or a list of tools).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ...jsontypes import JsonObject


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """What a tool tells the model and the platform about itself."""

    name: str
    """Identifier the model uses in its action (``[a-z][a-z0-9_]*``)."""
    description: str
    """One or two sentences shown to the model."""
    parameters: JsonObject
    """JSON schema of the arguments object (``type: object``)."""
    idempotent: bool
    """Safe to run again with the same arguments after a crash mid-call (no repeated side effect)."""
    repeatable: bool = False
    """A second call with the same arguments changes nothing the first did not (a read, a lookup, a
    whole-file write): the stuck monitor only counts its repeats. A tool that is not (a command, an
    append, a note that adds a memory) has an identical repeat refused with what the first call
    returned, unless the agent says why it must run again (``safety.stuck``). False by default, so a
    plugin tool that does not say is treated as having side effects."""
    runs_code: bool = False
    """Runs commands or code: the safety layer sandboxes such tools."""
    timeout_s: float = 30.0
    """Wall-time limit of one call."""
    example: JsonObject | None = None
    """Example arguments shown to the model (helps small models)."""


@dataclass(frozen=True, slots=True)
class CommandResult:
    """How a command ended."""

    exit_code: int
    output: str
    """The tail of stdout and stderr, interleaved."""
    killed: str = ""
    """Why the platform ended it ("wall-time limit ...", "memory limit ..."); empty when it exited."""
    limit: str = ""
    """Which limit ended it: ``timeout``, ``memory``, ``cpu`` or ``processes``; empty when none did."""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.killed


class CommandRunner(Protocol):
    """Runs one shell command for a tool call."""

    async def run(
        self,
        command: str,
        workspace: Path,
        *,
        timeout_s: float,
        env: dict[str, str],
        network: tuple[str, ...] = (),
    ) -> CommandResult:
        """Run ``command`` with ``workspace`` as its working (and only writable) directory."""
        ...


class Notes(Protocol):
    """The agent's key/value notes in L2 (used by remember/recall)."""

    def put_note(self, agent_id: str, key: str, value: str) -> None: ...

    def get_note(self, agent_id: str, key: str) -> str | None: ...

    def search_notes(self, agent_id: str, query: str, limit: int = 5) -> list[tuple[str, str]]: ...


class Recall(Protocol):
    """L3 episodic memory as tools see it (``memory.episodic.EpisodicMemory``)."""

    async def remember(self, agent_id: str, text: str, importance: float, step: int) -> bool: ...

    async def recall_texts(self, query: str, k: int, agent_id: str) -> list[str]: ...

    async def recall_for_prompt(
        self, query: str, agent_id: str, fits: Callable[[list[str]], bool], *, distilled: bool = True
    ) -> list[str]:
        """Other agents' memories that bear on ``query``, best first, as many as ``fits`` allows;
        ``distilled``: only what they learned (notes, verified results), never their action lines."""
        ...


class Knowledge(Protocol):
    """The hub's L4 knowledge graph as the ``knowledge`` tool sees it (``edge.knowledge``)."""

    async def ask(self, agent_id: str, about: str) -> ToolOutput: ...


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a tool call may use besides its arguments."""

    agent_id: str
    step: int
    idempotency_key: str
    """``<agent_id>/<step>``: tools with external side effects should pass it on."""
    workspace: Path
    """The agent's private folder; file tools stay inside it."""
    notes: Notes
    sandbox: CommandRunner | None = None
    """Where tools that run code must run it (bubblewrap unless the sandbox is turned off)."""
    network: tuple[str, ...] = ()
    """Hosts this call may reach from the sandbox: the policy rule's grant (empty: no network)."""
    memory: Recall | None = None
    """L3 episodic memory (None: off); remember/recall use it beside the L2 notes."""
    knowledge: Knowledge | None = None
    """The hub's knowledge graph (None: this device has no hub)."""


@dataclass(frozen=True, slots=True)
class ToolOutput:
    """What a tool returns."""

    output: str
    ok: bool = True
    error: str = ""
    """Error kind when not ok (e.g. "not_found", "exit_status", "timeout")."""
    finish: bool = False
    """The agent is done; ``output`` is its answer."""
    data: JsonObject = field(default_factory=dict)
    """Structured extras for the mind-log (not shown to the model)."""


class Tool(Protocol):
    """A callable tool."""

    @property
    def spec(self) -> ToolSpec: ...

    async def __call__(self, args: JsonObject, ctx: ToolContext) -> ToolOutput: ...
