"""The edge's side of the agents' ``knowledge`` tool: ask the hub's L4 knowledge graph over NATS
(request/reply on ``edgehub.kg.<device>``), with a cache in the device's store.

An answer comes from, in order:

1. the cache, when this question was answered less than ``cache_s`` ago (no round trip);
2. the hub, within ``timeout_s`` (and is then cached; "nothing known" answers too);
3. with the hub unreachable (no connection, no responder, no answer in time): the last cached answer
   of any age, marked with its age; else the observation that the hub is unreachable, so the agent
   goes on without it. The agent never waits longer than ``timeout_s`` for the hub.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.errors import Error as NatsError

from edgehub.protocol import subjects
from edgehub.protocol.v1 import knowledge_pb2

from ..agent.tools.base import ToolOutput
from ..store.base import KnowledgeCache

K = knowledge_pb2
log = logging.getLogger("edgehub.edge.uplink.knowledge")
SCHEMA_VERSION = 1
FACT_LIMIT = 12


def cache_key(about: str) -> str:
    return " ".join(about.lower().split())


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def render(answer: knowledge_pb2.KnowledgeAnswer) -> str:
    """The answer as the agent reads it: one line per fact."""
    if answer.status == K.KnowledgeAnswer.STATUS_NOT_FOUND:
        return answer.error or "nothing known about that"
    name = (
        f"{answer.entity_name} ({answer.entity_id})"
        if answer.entity_name != answer.entity_id
        else answer.entity_id
    )
    lines = [f"{name}:"] if answer.facts else [f"{name}: no facts are known"]
    for f in answer.facts:
        since = f.valid_from.ToDatetime().date().isoformat() if f.HasField("valid_from") else "?"
        lines.append(f"- {f.subject} {f.predicate} {f.object} (since {since})")
    if answer.truncated:
        lines.append("- (more facts exist)")
    if answer.also_matched:
        lines.append(f"also matched: {', '.join(answer.also_matched)}")
    return "\n".join(lines)


class KnowledgeClient:
    """Answers ``knowledge`` tool calls; ``connection()`` is the hub link's NATS client, or None."""

    def __init__(
        self,
        store: KnowledgeCache,
        device_id: str,
        connection: Callable[[], Client | None],
        *,
        timeout_s: float = 3.0,
        cache_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.device_id = device_id
        self.connection = connection
        self.timeout_s = timeout_s
        self.cache_s = cache_s
        self.clock = clock

    async def _ask_hub(self, agent_id: str, about: str) -> knowledge_pb2.KnowledgeAnswer | str:
        """The hub's answer, or why there is none."""
        nc = self.connection()
        if nc is None or not nc.is_connected:
            return "not connected"
        query = K.KnowledgeQuery(
            schema_version=SCHEMA_VERSION,
            device_id=self.device_id,
            agent_id=agent_id,
            entity=about,
            limit=FACT_LIMIT,
        )
        try:
            reply = await nc.request(
                subjects.knowledge(self.device_id), query.SerializeToString(), timeout=self.timeout_s
            )
            return K.KnowledgeAnswer.FromString(reply.data)
        except (TimeoutError, NatsError) as exc:  # no responder, timeout, connection closing
            return type(exc).__name__
        except DecodeError as exc:
            return f"unreadable answer ({exc})"

    async def ask(self, agent_id: str, about: str) -> ToolOutput:
        key = cache_key(about)
        now = self.clock()
        cached = self.store.knowledge_cached(key)
        if cached is not None and now - cached[1] < self.cache_s:
            return ToolOutput(render(K.KnowledgeAnswer.FromString(cached[0])), data={"source": "cache"})
        answer = await self._ask_hub(agent_id, about)
        if isinstance(answer, str):
            log.info("knowledge about %r: hub unreachable (%s)", about, answer)
            if cached is not None:
                text = render(K.KnowledgeAnswer.FromString(cached[0]))
                age = _age(now - cached[1])
                return ToolOutput(
                    f"(hub unreachable; remembered from {age} ago)\n{text}", data={"source": "stale cache"}
                )
            return ToolOutput(
                "the hub is unreachable (offline): no shared knowledge now; continue without it",
                ok=False,
                error="offline",
                data={"source": "none", "why": answer},
            )
        if answer.status in (K.KnowledgeAnswer.STATUS_OK, K.KnowledgeAnswer.STATUS_NOT_FOUND):
            self.store.cache_knowledge(key, answer.SerializeToString(), now)
            return ToolOutput(render(answer), data={"source": "hub"})
        status = K.KnowledgeAnswer.Status.Name(answer.status)
        error = "unavailable" if answer.status == K.KnowledgeAnswer.STATUS_UNAVAILABLE else "invalid"
        return ToolOutput(f"the hub could not answer: {answer.error or status}", ok=False, error=error)
