"""Episodes (L3 memories the edges replicate) as the graph stores them, from the event stream.

An episode that cannot be stored (``model.validate_episode``: blank or oversized text, an embedding
that is not 384 finite numbers, an impossible time or step) is dropped here with a warning, never
raised: one bad episode must not hold back the device's events behind it (they are applied in order,
and a raise would retry the batch forever).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC

from edgehub.protocol.v1 import events_pb2

from .errors import InvalidKnowledge
from .model import EpisodeRecord, validate_episode

log = logging.getLogger("edgehub.hub.knowledge")


def episode_records(events: Sequence[events_pb2.EdgeEvent]) -> list[EpisodeRecord]:
    """The storable episodes of ``events`` (those with an ``episode`` body)."""
    out = []
    for event in events:
        ep = event.episode
        try:
            record = EpisodeRecord(
                device_id=event.device_id,
                agent_id=event.agent_id,
                key=ep.key,
                text=ep.text,
                embedding=tuple(ep.embedding),
                at=ep.at.ToDatetime(tzinfo=UTC),
                importance=ep.importance,
                step=ep.step,
            )
            validate_episode(record)
        except (InvalidKnowledge, ValueError, OverflowError) as exc:
            log.warning("episode %s from %s dropped: %s", event.event_id, event.device_id, exc)
            continue
        out.append(record)
    return out
