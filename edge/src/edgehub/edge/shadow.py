"""Shadow reasoning for parity-gated rollouts (issue 21 part 3; docs/models.md).

A ``ShadowModel`` command names a model by its SHA-256. The device loads it only if it holds the file
at ``datadir.model_path`` and the file's bytes hash to that name; otherwise the command is refused with
the reason (``ShadowRefused``; the consumer dead-letters it). The model runs in a second, in-process
``LlamaBrain`` behind its own ``ModelGate``: it costs its own weights (mapped from the file, shared with
any process mapping the same file) and its own KV cache and logits buffer, beside the running model.

After each step the running model thought for is committed, the loop offers it (``offer``): the shadow
model gets the same prompt, schema and token limit, and its proposal (parsed exactly as the agent's,
never executed) goes into the outbox as a ``ShadowStep`` event, masked like every outgoing event, with
the L3 embedder's vectors of the two thoughts (the hub compares them). One step waits at most while
another is computed; any further step offered meanwhile is skipped and counted, so the shadow never
queues up behind a busy device. A proposal not ready within ``[shadow] timeout_s`` is dropped and
counted (its computation finishes in its thread; the model takes nothing new until then).
``stop=true`` unloads it once the computation in progress ended.

What it shadows is kept in ``<data_dir>/shadow.json`` (``STATE_VERSION``), so a restarted daemon
shadows again (``resume``) instead of leaving the hub's wave without steps until its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from edgehub.llm import Brain, ModelGate
from edgehub.protocol.ids import InvalidId
from edgehub.protocol.v1 import models_pb2
from edgehub.sync.models import file_sha256

from .agent.actions import parse_action
from .agent.shadow import ShadowAsk
from .config import EdgeConfig
from .datadir import model_path
from .errors import ShadowRefused
from .memory.episodic import Embedder

log = logging.getLogger("edgehub.edge.shadow")
STATE_FILE = "shadow.json"
STATE_VERSION = 1


Record = Callable[[str, int, models_pb2.ShadowStep], int]
"""Puts a shadow proposal (agent id, epoch, step) into the outbox (``SqliteStore.append_shadow_step``)."""
Opener = Callable[[Path], Brain]
"""Loads a GGUF file as a brain (blocking; run in a thread)."""


@dataclass
class ShadowCounts:
    """What became of the steps offered to the shadow model."""

    offered: int = 0
    recorded: int = 0
    skipped: int = 0
    """Offered while one step was computed and another waited: not shadowed."""
    timeouts: int = 0
    failed: int = 0

    def by_outcome(self) -> dict[str, int]:
        """What the metrics report (``edgehub_edge_shadow_steps``)."""
        return {
            "recorded": self.recorded,
            "skipped": self.skipped,
            "timeout": self.timeouts,
            "failed": self.failed,
        }


@dataclass
class _Active:
    rollout_id: str
    sha256: str
    name: str
    brain: Brain
    gate: ModelGate = field(init=False)

    def __post_init__(self) -> None:
        self.gate = ModelGate(self.brain)


def llama_opener(cfg: EdgeConfig) -> Opener:
    """Opens a shadow model with ``[model]``'s settings (``[shadow] n_threads`` if set)."""

    def open_file(path: Path) -> Brain:
        from edgehub.llm import ModelFileError
        from edgehub.llm.llama import LlamaBrain

        from .brain import llama_settings

        settings = replace(llama_settings(cfg.model), path=path, path_key="shadow model")
        if cfg.shadow.n_threads is not None:
            settings = replace(settings, n_threads=cfg.shadow.n_threads)
        try:
            return LlamaBrain.open(settings)
        except ModelFileError as exc:
            raise ShadowRefused(f"cannot load {path.name}: {exc.reason}") from None

    return open_file


class ShadowReasoner:
    """The model a rollout runs in shadow on this device, if any (see the module docstring)."""

    def __init__(
        self,
        data_dir: Path,
        record: Record,
        opener: Opener,
        *,
        embedder: Embedder | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self.data_dir = data_dir
        self.record = record
        self.opener = opener
        self.embedder = embedder
        self.timeout_s = timeout_s
        self.counts = ShadowCounts()
        self._active: _Active | None = None
        self._pending: ShadowAsk | None = None
        self._worker: asyncio.Task[None] | None = None
        self._switch = asyncio.Lock()

    @property
    def rollout_id(self) -> str:
        return self._active.rollout_id if self._active is not None else ""

    @property
    def sha256(self) -> str:
        return self._active.sha256 if self._active is not None else ""

    @property
    def idle(self) -> bool:
        """No step is being shadowed or waiting to be."""
        return self._pending is None and (self._worker is None or self._worker.done())

    async def command(self, cmd: models_pb2.ShadowModel) -> None:
        """Start (or with ``stop``, end) shadowing as the hub says; ShadowRefused with the reason."""
        if cmd.stop:
            await self.stop(cmd.rollout_id)
        else:
            await self.start(cmd)

    async def start(self, cmd: models_pb2.ShadowModel) -> None:
        """Load ``cmd.sha256`` in shadow for ``cmd.rollout_id`` (replacing any other shadow)."""
        async with self._switch:
            if self._active is not None and (self._active.rollout_id, self._active.sha256) == (
                cmd.rollout_id,
                cmd.sha256,
            ):
                return  # a redelivered command: already shadowing
            path = self._held(cmd.sha256)
            actual = await asyncio.to_thread(file_sha256, path)
            if actual != cmd.sha256:
                raise ShadowRefused(
                    f"model {cmd.sha256[:12]} at {path} does not verify (its sha256 is {actual})"
                )
            brain = await asyncio.to_thread(self.opener, path)
            await self._unload()
            self._active = _Active(cmd.rollout_id, cmd.sha256, cmd.name, brain)
            self._keep(cmd)
        log.warning("rollout %s: model %s (%s) in shadow", cmd.rollout_id, cmd.sha256[:12], cmd.name or "-")

    def _held(self, sha256: str) -> Path:
        try:
            path = model_path(self.data_dir, sha256)
        except InvalidId as exc:
            raise ShadowRefused(exc.message) from None
        if not path.is_file():
            raise ShadowRefused(f"model {sha256[:12]} is not held on this device (no {path})")
        return path

    async def stop(self, rollout_id: str = "") -> None:
        """Unload the shadow model (of ``rollout_id`` only, when given)."""
        async with self._switch:
            if self._active is None or (rollout_id and rollout_id != self._active.rollout_id):
                return
            log.warning("rollout %s: shadow stopped", self._active.rollout_id)
            await self._unload()

    @property
    def _state(self) -> Path:
        return self.data_dir / STATE_FILE

    def _keep(self, cmd: models_pb2.ShadowModel) -> None:
        data = {
            "version": STATE_VERSION,
            "rollout_id": cmd.rollout_id,
            "sha256": cmd.sha256,
            "name": cmd.name,
        }
        tmp = self._state.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self._state)

    async def resume(self) -> None:
        """Shadow again what the daemon shadowed before it stopped (a model refused now is dropped,
        logged: the hub's wave times out as for a device that refused it at once)."""
        try:
            data = json.loads(self._state.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("%s unreadable (%s): not shadowing", self._state, exc)
            self._state.unlink(missing_ok=True)
            return
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            log.error("%s: not a version %d shadow state: not shadowing", self._state, STATE_VERSION)
            self._state.unlink(missing_ok=True)
            return
        cmd = models_pb2.ShadowModel(
            rollout_id=str(data.get("rollout_id", "")),
            sha256=str(data.get("sha256", "")),
            name=str(data.get("name", "")),
        )
        try:
            await self.start(cmd)
        except ShadowRefused as exc:
            log.error("rollout %s: shadow not resumed: %s", cmd.rollout_id, exc.message)
            self._state.unlink(missing_ok=True)

    async def _unload(self, *, forget: bool = True) -> None:
        """Unload the model; ``forget``: and what it shadowed (a shutdown keeps it for ``resume``)."""
        active, self._active, self._pending = self._active, None, None
        if forget:
            self._state.unlink(missing_ok=True)
        if active is not None:
            await active.gate.call(active.brain.close)  # after the computation in progress

    def offer(self, ask: ShadowAsk) -> None:
        if self._active is None:
            return
        self.counts.offered += 1
        if self._pending is not None:
            self.counts.skipped += 1
            return
        self._pending = ask
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain(), name="shadow")

    async def _drain(self) -> None:
        while self._pending is not None and (active := self._active) is not None:
            ask, self._pending = self._pending, None
            try:
                await self._one(active, ask)
            except Exception:  # the shadow is an observer: nothing it hits may reach the agent
                self.counts.failed += 1
                log.exception("shadow of %s step %d failed", ask.agent_id, ask.step)

    async def _one(self, active: _Active, ask: ShadowAsk) -> None:
        started = time.perf_counter()
        c = ask.call
        computing = asyncio.ensure_future(
            active.gate.complete(
                c.prompt, json_schema=c.json_schema, max_tokens=c.max_tokens, special=c.special
            )
        )
        try:
            completion = await asyncio.wait_for(asyncio.shield(computing), self.timeout_s)
        except TimeoutError:
            self.counts.timeouts += 1
            log.warning(
                "shadow of %s step %d: no proposal within %.0f s", ask.agent_id, ask.step, self.timeout_s
            )
            with contextlib.suppress(Exception):
                await computing  # the model is busy until then: offers meanwhile are skipped
            return
        proposal = parse_action(completion.text)
        shadow = models_pb2.ShadowStep(
            rollout_id=active.rollout_id,
            step=ask.step,
            current_model=ask.current_model,
            shadow_model=active.sha256,
            current_tool=ask.proposal.tool,
            current_args=ask.proposal.args_json(),
            current_thought=ask.proposal.thought,
            shadow_tool=proposal.tool,
            shadow_args=proposal.args_json() if proposal.ok else "",
            shadow_thought=proposal.thought,
            shadow_ms=(time.perf_counter() - started) * 1000,
            shadow_error=proposal.error,
        )
        await self._embed(shadow)
        if self._active is active:  # not stopped meanwhile
            self.record(ask.agent_id, ask.epoch, shadow)
            self.counts.recorded += 1

    async def _embed(self, shadow: models_pb2.ShadowStep) -> None:
        """The two thoughts' vectors (before masking, as for episodes); none when the embedder fails."""
        if self.embedder is None:
            return
        try:
            vectors = await asyncio.to_thread(
                self.embedder.embed, [shadow.current_thought, shadow.shadow_thought]
            )
        except Exception as exc:
            log.warning("shadow thoughts not embedded (%s: %s)", type(exc).__name__, exc)
            return
        shadow.current_embedding.extend(vectors[0].tolist())
        shadow.shadow_embedding.extend(vectors[1].tolist())
        shadow.embedding_model = self.embedder.name

    async def shutdown(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._worker
        async with self._switch:
            await self._unload(forget=False)
