"""The agent scheduler: runs each ready agent of this device as a task, within ``max_concurrent``.

Work arrives through the store: ``submit`` (or another process such as the CLI) inserts a PENDING
agent and the next tick starts it; agents left RUNNING by a previous life (a crash or a drain) are
ready too and resume from their last checkpoint. Every running agent has its own stop event, so one
can be stopped (``stop_agent``) or held still for a migration (``hold``) at its step boundary while
the others go on; ``request_stop`` stops them all after their current step. An agent whose write
does not fit on the disk (``StoreFull``) is paused, not failed, and no agent starts until there is
space again; then the paused ones resume from their last checkpoint (``pressure.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable

from edgehub.protocol.v1 import agent_pb2

from .agent.loop import AgentLoop, new_agent
from .errors import StoreFull
from .pressure import DiskPressure
from .store.base import EdgeStore

log = logging.getLogger("edgehub.edge")
S = agent_pb2
ACTIVE = (S.AGENT_STATUS_PENDING, S.AGENT_STATUS_RUNNING)
"""Statuses of agents the scheduler runs."""


class AgentScheduler:
    """Starts ready agents and stops them on request; ``run`` ticks until stopped, then drains."""

    def __init__(
        self,
        store: EdgeStore,
        loop: AgentLoop,
        *,
        max_concurrent: int,
        drain_timeout: float = 30.0,
        poll_interval: float = 0.2,
        pressure: DiskPressure | None = None,
    ) -> None:
        self.store = store
        self.pressure = pressure
        """Pauses agents while the store's disk is full (None: a full disk fails them)."""
        self.loop = loop
        self.max_concurrent = max_concurrent
        self.drain_timeout = drain_timeout
        self.poll_interval = poll_interval
        self._stop = asyncio.Event()
        self._agent_stops: dict[str, asyncio.Event] = {}
        self._stop_reasons: dict[str, str] = {}
        self._held: set[str] = set()
        """Agents not to start (held still for a migration)."""
        self._tasks: dict[str, asyncio.Task[agent_pb2.AgentState]] = {}

    @property
    def running(self) -> list[str]:
        """Ids of the agents stepping now, sorted."""
        return sorted(self._tasks)

    def submit(
        self,
        goal: str,
        *,
        agent_id: str | None = None,
        budget: agent_pb2.Budget | None = None,
        task_id: str = "",
        tools: list[str] | None = None,
        trace_parent: str = "",
    ) -> str:
        """Create a PENDING agent for ``goal`` (the next tick starts it); its id. ``tools``: the only
        tools it may call besides ``finish`` (None: every tool); ``trace_parent``: the W3C traceparent
        its runs are children of (kept in its state, so a restart joins the same trace)."""
        agent_id = agent_id or f"agent-{uuid.uuid4().hex[:12]}"
        state = new_agent(agent_id, goal, budget, task_id, tools)
        state.trace_parent = trace_parent
        self.store.create_agent(state)
        return agent_id

    def request_stop(self) -> None:
        """Ask every agent to stop after its current step (SIGTERM)."""
        self._stop.set()
        for stop in self._agent_stops.values():
            stop.set()

    def schedule(self) -> None:
        """Start what is ready now (an agent just imported), not at the next tick."""
        if not self._stop.is_set():
            self._start_ready()

    async def run(self, *, until_idle: bool = False, tick: Callable[[], None] | None = None) -> None:
        """Start ready agents every ``poll_interval`` (calling ``tick`` each time) until stopped, or with
        ``until_idle`` until none runs; then wait for the running ones (``drain``)."""
        while not self._stop.is_set():
            self._start_ready()
            if tick is not None:
                tick()
            if until_idle and not self._tasks and not (self.pressure and self.pressure.paused):
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.poll_interval)
        await self.drain()

    async def stop_agent(self, agent_id: str, reason: str) -> agent_pb2.AgentState:
        """Stop one agent after its current step; returns once STOPPED is committed."""
        task = self._tasks.get(agent_id)
        if task is not None:
            self._stop_reasons[agent_id] = reason
            self._agent_stops.setdefault(agent_id, asyncio.Event()).set()
            await asyncio.shield(task)
        return self.loop.end(agent_id, S.AGENT_STATUS_STOPPED, reason)

    @contextlib.asynccontextmanager
    async def hold(self, agent_id: str) -> AsyncIterator[None]:
        """Stop the agent after its current step (checkpointed, status unchanged) and keep it from
        being started again while the block runs."""
        self._held.add(agent_id)
        try:
            task = self._tasks.get(agent_id)
            if task is not None:
                self._agent_stops.setdefault(agent_id, asyncio.Event()).set()
                await asyncio.shield(task)
            yield
        finally:
            self._held.discard(agent_id)

    async def drain(self) -> None:
        """Wait up to ``drain_timeout`` for the running agents (stopped or not), then cancel the rest:
        their last checkpoint stands and the step in flight re-runs on resume."""
        tasks = list(self._tasks.values())
        if not tasks:
            return
        log.info("draining %d agent(s)", len(tasks))
        _, pending = await asyncio.wait(tasks, timeout=self.drain_timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def _start_ready(self) -> None:
        if self.pressure is not None:
            if self.pressure.full:
                for agent_id in self._tasks:  # nearly full: stop at the step boundary, before a write fails
                    if agent_id not in self.pressure.paused:
                        self.pressure.pause(agent_id)
                        self._agent_stops.setdefault(agent_id, asyncio.Event()).set()
                return
            for paused in self.pressure.take_resumed():
                try:
                    self.loop.note_pause(paused.agent_id, paused.reason, time.time() - paused.since)
                except StoreFull as exc:  # full again at once
                    self.pressure.hit(paused.agent_id, exc)
                    return
        for state in self.store.list_agents(ACTIVE):
            agent_id = state.agent_id
            if agent_id in self._tasks or agent_id in self._held or len(self._tasks) >= self.max_concurrent:
                continue
            task = asyncio.create_task(self._run_agent(agent_id), name=agent_id)
            self._tasks[agent_id] = task
            task.add_done_callback(functools.partial(self._forget, agent_id))

    def _forget(self, agent_id: str, _task: object) -> None:
        self._tasks.pop(agent_id, None)

    async def _run_agent(self, agent_id: str) -> agent_pb2.AgentState:
        try:
            stop = self._agent_stops.setdefault(agent_id, asyncio.Event())
            if self._stop.is_set():
                stop.set()
            state = await self.loop.run(agent_id, stop)
        except StoreFull as exc:
            if self.pressure is None:
                raise
            log.warning("agent %s paused: %s", agent_id, exc.message)
            self.pressure.hit(agent_id, exc)
            return self.store.load_agent(agent_id)  # its last checkpoint: resumed from there
        except Exception as exc:  # a bug in one agent's step must not take the others down
            log.exception("agent %s failed with an internal error", agent_id)
            reason = f"internal error: {exc.__class__.__name__}: {exc}"
            state = self.loop.end(agent_id, S.AGENT_STATUS_FAILED, reason)
        finally:
            self._agent_stops.pop(agent_id, None)
        stopped_for = self._stop_reasons.pop(agent_id, None)
        if stopped_for is not None:  # stopped on request (not a drain, which resumes on restart)
            state = self.loop.end(agent_id, S.AGENT_STATUS_STOPPED, stopped_for)
        log.info("agent %s: %s", agent_id, S.AgentStatus.Name(state.status))
        return state
