"""Where the edges' events go once the applier admitted them (``EventApplier``'s ``apply_batch``):
step events to the agent registry, task results (and task agents' first steps) to the goals, episodes
to the knowledge graph. An event its device may not send for its agent (``fleet.agents.fence``) is
applied nowhere and kept in the dead letters with the reason.
"""

from __future__ import annotations

import asyncio
import logging

from edgehub.protocol import subjects
from edgehub.protocol.v1 import events_pb2

from .fleet.agents import Refusal, fence
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
        if steps:
            await self._dead_letter(await self.services.agents.apply_batch(steps))
        results = _of(events, "task_result")
        refused = {id(e) for e, _ in await self._fence(results)}
        mine = steps + [e for e in results if id(e) not in refused]  # task agents' steps: start times
        await self._dead_letter(await self.services.goals.on_events(mine))
        await self._episodes(_of(events, "episode"))

    async def _fence(self, results: list[Event]) -> list[Refusal]:
        """Task results whose device did not own the agent at their epoch (as for steps: a stale copy
        of a migrated agent), dead-lettered; the rest may be applied."""
        records = await asyncio.gather(*(self.services.agents.get(e.agent_id) for e in results))
        refused = [(e, why) for e, record in zip(results, records, strict=True) if (why := fence(record, e))]
        await self._dead_letter(refused)
        return refused

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
            headers = {"Edgehub-Reason": f"fenced: {reason}"[:500], "Edgehub-Subject": event.event_id[:200]}
            await self.services.js.publish(
                subjects.deadletter("events"), event.SerializeToString(), headers=headers
            )
