"""Where the edges' events go once the applier admitted them (``EventApplier``'s ``apply_batch``): step
events to the agent registry, task results (and task agents' first steps) to the goals, episodes to the
knowledge graph, shadow steps to their rollouts (``fleet/rollouts.py``). An event its device may not send
for its agent (``fleet.agents.fence``: another device's agent, an id in the hub's namespace not
registered to it, a stale copy after a migration) is applied nowhere, steps, results and episodes alike,
and kept in the dead letters with the reason.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from edgehub.protocol import subjects
from edgehub.protocol.v1 import events_pb2
from edgehub.sync.errors import dead_letter_headers

from .fleet.agents import AgentRecord, Refusal, fence, stranger
from .knowledge.episodes import episode_records
from .services import HubServices

log = logging.getLogger("edgehub.hub.routing")
Event = events_pb2.EdgeEvent


def _of(events: list[Event], body: str) -> list[Event]:
    return [e for e in events if e.WhichOneof("body") == body]


class EventRouter:
    """The hub's event routing (see the module docstring), with its counters."""

    def __init__(self, services: HubServices) -> None:
        self.services = services
        self.fenced = 0
        """Events refused by the single-owner fence, dead-lettered."""
        self.episodes_dropped = 0
        """Episodes that arrived at a hub that keeps no knowledge graph."""

    async def apply_batch(self, events: list[Event]) -> None:
        """Steps to the agent registry, results to the goals, episodes (L3, replicated for
        consolidation) to the graph, in the same batch, so a batch is acked only when all have it. A
        hub without a graph (``[neo4j] enabled = false``) counts episodes and drops them."""
        steps = _of(events, "step")
        fenced = await self.services.agents.apply_batch(steps) if steps else []
        await self._dead_letter(fenced)
        results = await self._fence(_of(events, "task_result"))
        refused = {id(e) for e, _ in fenced}
        mine = [e for e in steps if id(e) not in refused] + results  # task agents' steps: start times
        await self._dead_letter(await self.services.goals.on_events(mine))
        await self._episodes(await self._fence(_of(events, "episode"), stranger))  # no epoch of their own
        shadow = _of(events, "shadow_step")
        if shadow:  # judged by the device the subject authenticated and its rollout, not by agent
            await self.services.rollouts.apply(shadow)

    async def _fence(
        self, events: list[Event], check: Callable[[AgentRecord | None, Event], str] = fence
    ) -> list[Event]:
        """The events whose device owned their agent at their epoch (as for steps); the others (another
        device's agent, a stale copy of a migrated one) are dead-lettered. One read per agent."""
        agents = list({e.agent_id for e in events})
        records = dict(zip(agents, await asyncio.gather(*map(self.services.agents.get, agents)), strict=True))
        refused = [(e, why) for e in events if (why := check(records[e.agent_id], e))]
        await self._dead_letter(refused)
        dropped = {id(e) for e, _ in refused}
        return [e for e in events if id(e) not in dropped]

    async def _episodes(self, episodes: list[Event]) -> None:
        if not episodes:
            return
        if self.services.knowledge is None:
            self.episodes_dropped += len(episodes)
            log.debug("%d episodes dropped: this hub keeps no knowledge graph", len(episodes))
            return
        await self.services.knowledge.graph.add_episodes(episode_records(episodes))

    async def _dead_letter(self, refused: list[Refusal]) -> None:
        """Events their device may not send for the agent (a stale copy after a migration, another
        device's agent): not applied; kept in the dead letters with the reason."""
        for event, reason in refused:
            self.fenced += 1
            log.warning("event %s from %s refused: %s", event.event_id, event.device_id, reason)
            headers = dead_letter_headers(f"fenced: {reason}", event.event_id)
            await self.services.js.publish(
                subjects.deadletter("events"), event.SerializeToString(), headers=headers
            )
