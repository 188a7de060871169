"""The hub's side of the agents' ``knowledge`` tool: answers ``KnowledgeQuery`` requests that devices
send on ``edgehub.kg.<device>`` (core NATS request/reply) from the L4 graph.

Every hub process subscribes in one queue group, so each query is answered once, by whichever hub is
free. A query is answered, always, with a status: ``OK`` with the facts of the entity the words name
best (and the other entities they matched), ``NOT_FOUND``, ``INVALID`` (undecodable, oversized, wrong
schema version, a device asking in another's name, a bad predicate) or ``UNAVAILABLE`` (the graph is
down or still starting). Nothing a device sends can end the subscription. Queries run concurrently, at
most ``concurrency`` at a time; beyond that NATS buffers them and the edge's timeout decides.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry, Counter, Histogram

from edgehub.protocol import subjects
from edgehub.protocol.ids import InvalidId, check_ids
from edgehub.protocol.v1 import knowledge_pb2

from .errors import InvalidKnowledge, KnowledgeError
from .graph import KnowledgeGraph
from .model import StoredFact

K = knowledge_pb2
log = logging.getLogger("edgehub.hub.knowledge")
QUEUE = "edgehub-kg"
SCHEMA_VERSION = 1
MAX_QUERY_BYTES = 4096
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
ALSO_MATCHED = 4


def _answer(status: int, error: str = "") -> knowledge_pb2.KnowledgeAnswer:
    return K.KnowledgeAnswer(schema_version=SCHEMA_VERSION, status=status, error=error)  # type: ignore[arg-type]


def _fact(stored: StoredFact) -> knowledge_pb2.KnowledgeFact:
    f = stored.fact
    out = K.KnowledgeFact(
        subject=f.subject,
        predicate=f.predicate,
        object=f.object if f.object is not None else str(f.value),
        source="/".join(x for x in (f.provenance.device_id, f.provenance.agent_id) if x),
    )
    out.valid_from.FromDatetime(f.valid_from)
    return out


class KnowledgeResponder:
    """Serves knowledge queries until ``run``'s stop event is set."""

    def __init__(
        self,
        nc: Client,
        graph: Callable[[], KnowledgeGraph],
        *,
        metrics: CollectorRegistry | None = None,
        concurrency: int = 16,
    ) -> None:
        self.nc = nc
        self.graph = graph
        """The graph, or GraphUnavailable (a KnowledgeError) while there is none."""
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self.queries = Counter(
            "edgehub_hub_knowledge_queries",
            "Knowledge-tool queries answered, by status",
            ["status"],
            registry=metrics,
        )
        self.latency = Histogram(
            "edgehub_hub_knowledge_query_seconds",
            "Time to answer one knowledge-tool query",
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=metrics,
        )

    async def answer(self, subject: str, data: bytes) -> knowledge_pb2.KnowledgeAnswer:
        """The answer to one request (never raises for anything the request holds)."""
        if len(data) > MAX_QUERY_BYTES:
            return _answer(K.KnowledgeAnswer.STATUS_INVALID, f"query too large: {len(data)} bytes")
        try:
            device_id = subjects.parse_knowledge(subject)
            query = K.KnowledgeQuery.FromString(data)
        except (ValueError, DecodeError) as exc:
            return _answer(K.KnowledgeAnswer.STATUS_INVALID, f"undecodable query: {exc}")
        if query.schema_version != SCHEMA_VERSION:
            return _answer(
                K.KnowledgeAnswer.STATUS_INVALID,
                f"unknown schema_version {query.schema_version} (this hub speaks {SCHEMA_VERSION})",
            )
        if query.device_id != device_id:
            return _answer(K.KnowledgeAnswer.STATUS_INVALID, "device_id differs from the subject's device")
        try:
            check_ids(query)
        except InvalidId as exc:
            return _answer(K.KnowledgeAnswer.STATUS_INVALID, exc.message)
        limit = min(query.limit or DEFAULT_LIMIT, MAX_LIMIT)
        try:
            graph = self.graph()
            found = await graph.lookup(query.entity, limit=1 + ALSO_MATCHED)
            if not found:
                return _answer(K.KnowledgeAnswer.STATUS_NOT_FOUND, f"nothing known about {query.entity!r}")
            best = found[0]
            facts = await graph.facts_about(best.id, predicate=query.predicate or None, limit=limit + 1)
        except InvalidKnowledge as exc:
            return _answer(K.KnowledgeAnswer.STATUS_INVALID, str(exc))
        except KnowledgeError as exc:
            log.warning("knowledge query from %s not answered: %s", device_id, exc)
            return _answer(K.KnowledgeAnswer.STATUS_UNAVAILABLE, f"the knowledge graph is unavailable: {exc}")
        out = _answer(K.KnowledgeAnswer.STATUS_OK)
        out.entity_id, out.entity_name = best.id, best.name
        out.facts.extend(_fact(f) for f in facts[:limit])
        out.truncated = len(facts) > limit
        out.also_matched.extend(e.id for e in found[1:])
        return out

    async def _serve(self, msg: Msg) -> None:
        try:
            with self.latency.time():
                answer = await self.answer(msg.subject, msg.data)
            self.queries.labels(K.KnowledgeAnswer.Status.Name(answer.status)).inc()
            if msg.reply:
                await msg.respond(answer.SerializeToString())
        except Exception:  # a reply that cannot be sent (disconnected): the edge's timeout answers
            log.exception("knowledge query on %s failed", msg.subject)
        finally:
            self._slots.release()

    async def _on_msg(self, msg: Msg) -> None:
        await self._slots.acquire()
        task = asyncio.create_task(self._serve(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self, stop: asyncio.Event) -> None:
        sub = await self.nc.subscribe(subjects.ALL_KNOWLEDGE, queue=QUEUE, cb=self._on_msg)
        try:
            await stop.wait()
        finally:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # the connection is already closing
                log.debug("knowledge subscription: %s", exc)
            await asyncio.gather(*self._tasks, return_exceptions=True)
