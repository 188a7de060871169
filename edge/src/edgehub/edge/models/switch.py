"""Switching the running model (``UseModel``) while the daemon runs.

Every part of the daemon holds one ``SwitchableBrain``; a switch replaces the brain inside it. It runs
only on a model this device holds verified *and* whose file hashes to its name right now: the file is
hashed again before every switch (no marker is trusted; a file changed on disk since it was verified
is caught here and the model marked failed). Anything else is refused (``MessageRejected``: the
command is dead-lettered with the reason) and the running model stays.

The switch happens at a step boundary: the running agents are held (each stops after its current
step, checkpointed), then, holding the model gate (no call in flight), the old brain is closed and the
new one opened (a failed open reopens the old one), the choice is kept (``running.ChoiceFile``) and
each active agent's mind-log records the change; then the agents go on with the new model. A CRIU image
of the worker names the model's fingerprint, so an image of the old model is never restored for the
new one (``worker.manifest``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edgehub.llm import Brain, Completion, ModelGate
from edgehub.protocol.ids import InvalidId, check_sha256
from edgehub.protocol.v1 import models_pb2
from edgehub.sync.errors import MessageRejected
from edgehub.sync.models import file_sha256

from .running import Choice, ChoiceFile, RunningModel
from .shelf import VERIFIED, ModelShelf

if TYPE_CHECKING:
    from edgehub.llm.chat import ChatFormat

log = logging.getLogger("edgehub.edge.models")
OpenBrain = Callable[[Path], Brain]
"""Opens the model file at a path as the daemon's brain (blocking)."""


class SwitchableBrain:
    """A ``Brain`` whose model can be replaced (``swap``); it delegates everything to the current one."""

    def __init__(self, inner: Brain, *, owned: bool = True) -> None:
        self.inner = inner
        self.owned = owned
        """The daemon closes it (False: a caller's brain, left open)."""
        self.closed = False
        """The current brain was closed by a swap whose new model did not open."""

    @property
    def n_ctx(self) -> int:
        return self.inner.n_ctx

    @property
    def fingerprint(self) -> str:
        return self.inner.fingerprint

    @property
    def chat_format(self) -> ChatFormat | None:
        return self.inner.chat_format

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def complete(
        self,
        prompt: str,
        *,
        json_schema: dict[str, Any] | None = None,
        max_tokens: int = 256,
        stop: list[str] | None = None,
        special: bool = False,
    ) -> Completion:
        return self.inner.complete(
            prompt, json_schema=json_schema, max_tokens=max_tokens, stop=stop, special=special
        )

    def swap(self, open_new: Callable[[], Brain]) -> None:
        """Close the current brain (when owned) and open the new one. If the open fails the error goes
        on and ``closed`` says whether the old brain was closed (the caller then reopens its model)."""
        if self.owned:
            self.inner.close()
            self.closed = True
        self.inner = open_new()
        self.owned, self.closed = True, False

    def close(self) -> None:
        if self.owned and not self.closed:
            self.inner.close()
            self.closed = True


class Agents(Protocol):
    """What a switch needs of the scheduler."""

    @property
    def running(self) -> list[str]: ...

    def hold(self, agent_id: str) -> AbstractAsyncContextManager[None]: ...

    def schedule(self) -> None: ...


class Notes(Protocol):
    """Writes into an agent's mind-log (``AgentLoop.note``)."""

    def note(self, agent_id: str, detail: str, name: str) -> None: ...

    def active(self) -> list[str]: ...


class ModelSwitch:
    """Applies ``UseModel`` (see the module docstring)."""

    def __init__(
        self,
        shelf: ModelShelf,
        brain: SwitchableBrain,
        gate: ModelGate,
        open_brain: OpenBrain,
        running: RunningModel,
        agents: Agents,
        notes: Notes,
    ) -> None:
        self.shelf = shelf
        self.brain = brain
        self.gate = gate
        self.open_brain = open_brain
        self.running = running
        self.agents = agents
        self.notes = notes
        self.choices = ChoiceFile(shelf.data_dir)

    async def use(self, use: models_pb2.UseModel) -> None:
        """Switch to ``use``'s model, or refuse (``MessageRejected``)."""
        try:
            sha = check_sha256(use.sha256)
        except InvalidId as exc:
            raise MessageRejected(exc.message) from None
        path = await self.verified(sha)
        if self.running.sha256 == sha:
            return  # the command came again, or it runs already
        async with AsyncExitStack() as held:
            for agent_id in self.agents.running:
                await held.enter_async_context(self.agents.hold(agent_id))
            await self.gate.call(lambda: self._swap(path))
            before = self.running.name or self.running.sha256[:12] or "the configured model"
            record = self.shelf.get(sha)
            name = use.name or (record.name if record is not None else "")
            self.choices.put(Choice(sha, name, use.reason, time.time()))
            self.running.path, self.running.sha256, self.running.name = path, sha, name
            self.running.since = time.time()
            detail = f"model changed: {before} -> {name or sha[:12]} ({sha[:12]})"
            for agent_id in self.notes.active():
                self.notes.note(agent_id, detail + (f": {use.reason}" if use.reason else ""), "model")
        self.agents.schedule()
        log.warning("now running model %s (%s)", name, sha[:12])

    async def verified(self, sha: str) -> Path:
        """The model's file, held verified and hashing to its name now; ``MessageRejected`` otherwise."""
        record = self.shelf.get(sha)
        path = self.shelf.path(sha)
        if record is None or record.state != VERIFIED or not path.is_file():
            state = "not held" if record is None else record.state
            raise MessageRejected(f"model {sha[:12]} is not held verified on this device ({state})")
        actual = await asyncio.to_thread(file_sha256, path)
        if actual != sha:
            await asyncio.to_thread(
                self.shelf.fail, record, f"the file hashes to {actual} now: changed on disk"
            )
            raise MessageRejected(f"model {sha[:12]}: its file hashes to {actual}; not run")
        return path

    def _swap(self, path: Path) -> None:
        """In the gate's thread: the new model in, or the old one back (then the error goes on)."""
        old = self.running.path
        try:
            self.brain.swap(lambda: self.open_brain(path))
        except Exception as exc:
            log.error("model %s did not open (%s): back to the one before", path.name, exc)
            if self.brain.closed and old is not None:
                self.brain.swap(lambda: self.open_brain(old))
            raise MessageRejected(f"model {path.stem[:12]} did not open: {exc}") from None
