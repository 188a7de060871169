"""The hub's side of escalation: answers the steps edge agents escalate (``EscalateRequest`` on
``edgehub.esc.<device>``, core NATS request/reply) with the hub's own model.

- The device is the one the subject names: a device's credentials let it publish only on its own
  subject (``sync.auth.device_permissions``), so the payload is never asked who sent it.
- A request is checked first (size, schema version, prompt and schema length, ``max_tokens``): a bad
  one gets an ``error`` reply at once, saying what is wrong.
- The cache (``edgehub.sync.escalation.AnswerCache``, keyed by the prompt, schema, max_tokens and this
  hub's model fingerprint; the key the device sent is not trusted) answers a repeated step at once.
- Otherwise the request waits in a ``FairQueue``: one FIFO per device, served round-robin, each and the
  whole bounded; over a bound it is answered "busy" at once. One worker takes requests in turn and runs
  each on the hub's model through the gate it shares with the planner (``hubmodel.HubModel``); a request
  whose deadline passed while it waited is answered "deadline" without using the model.

Every request is answered, always; nothing a device sends can end the subscription.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from edgehub.protocol import subjects
from edgehub.protocol.ids import InvalidId, check_id
from edgehub.protocol.v1 import models_pb2
from edgehub.sync.escalation import (
    ESCALATION_VERSION,
    AnswerCache,
    CachedAnswer,
    context_key,
    schema_text,
)

from ..config import EscalationConfig
from ..hubmodel import HubModel
from .fair import FairQueue

M = models_pb2
log = logging.getLogger("edgehub.hub.escalation")
QUEUE = "edgehub-esc"
MAX_REQUEST_BYTES = 1 << 20


class Refused(Exception):
    """A request answered with an error before it reaches the model; ``outcome``: its metrics label."""

    def __init__(self, outcome: str, error: str) -> None:
        super().__init__(error)
        self.outcome = outcome
        self.error = error


@dataclass(frozen=True, slots=True)
class Pending:
    """A checked request waiting for the model."""

    msg: Msg
    request: models_pb2.EscalateRequest
    schema: dict[str, object] | None
    received: float
    """``time.monotonic()`` when it arrived."""


def reply(**fields: object) -> models_pb2.EscalateReply:
    return M.EscalateReply(schema_version=ESCALATION_VERSION, **fields)  # type: ignore[arg-type]


class EscalationMetrics:
    """Requests by outcome, latency, queue depth, cache hit rate."""

    def __init__(self, registry: CollectorRegistry, queue: FairQueue[Pending], cache: AnswerCache) -> None:
        self.requests = Counter(
            "edgehub_hub_escalations", "Escalated steps answered, by outcome", ["outcome"], registry=registry
        )
        self.latency = Histogram(
            "edgehub_hub_escalation_seconds",
            "From an escalation's arrival to its reply (queue and model)",
            buckets=(0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        depth = Gauge("edgehub_hub_escalation_queue_depth", "Escalations waiting for the model",
                      registry=registry)  # fmt: skip
        depth.set_function(lambda: len(queue))
        self.cache = Counter(
            "edgehub_hub_escalation_cache",
            "Cache lookups by result (hit, miss)",
            ["result"],
            registry=registry,
        )
        ratio = Gauge("edgehub_hub_escalation_cache_hit_ratio", "Cache hits over lookups since start",
                      registry=registry)  # fmt: skip
        ratio.set_function(lambda: cache.hit_rate)


class EscalationService:
    """Serves escalations until ``run``'s stop event is set (see the module docstring)."""

    def __init__(
        self,
        nc: Client,
        model: HubModel,
        cfg: EscalationConfig,
        *,
        metrics: CollectorRegistry | None = None,
    ) -> None:
        self.nc = nc
        self.model = model
        self.cfg = cfg
        self.queue: FairQueue[Pending] = FairQueue(per_device=cfg.queue_per_device, total=cfg.queue_total)
        self.cache = AnswerCache(cfg.cache_entries)
        self.metrics = EscalationMetrics(metrics or CollectorRegistry(), self.queue, self.cache)

    # checking --------------------------------------------------------------------------------------
    def check(self, data: bytes) -> tuple[models_pb2.EscalateRequest, dict[str, object] | None]:
        """The request and its schema; Refused with what is wrong."""
        if len(data) > MAX_REQUEST_BYTES:
            raise Refused("invalid", f"too large: request of {len(data)} bytes")
        try:
            req = M.EscalateRequest.FromString(data)
        except DecodeError as exc:
            raise Refused("invalid", f"undecodable request: {exc}") from None
        if req.schema_version != ESCALATION_VERSION:
            raise Refused("invalid", f"unknown schema_version {req.schema_version} "
                          f"(this hub reads {ESCALATION_VERSION})")  # fmt: skip
        try:
            check_id(req.agent_id, "agent_id")
        except InvalidId as exc:
            raise Refused("invalid", exc.message) from None
        c = self.cfg
        if len(req.prompt) > c.max_prompt_chars:
            raise Refused("too_large", f"too large: prompt of {len(req.prompt)} characters "
                          f"(this hub takes at most {c.max_prompt_chars})")  # fmt: skip
        if len(req.json_schema) > c.max_schema_chars:
            raise Refused("too_large", f"too large: schema of {len(req.json_schema)} characters "
                          f"(this hub takes at most {c.max_schema_chars})")  # fmt: skip
        if not 0 < req.max_tokens <= c.max_tokens:
            raise Refused("too_large", f"max_tokens {req.max_tokens} is outside 1..{c.max_tokens}")
        return req, self._schema(req.json_schema)

    @staticmethod
    def _schema(text: str) -> dict[str, object] | None:
        if not text:
            return None
        try:
            schema = json.loads(text)
        except json.JSONDecodeError as exc:
            raise Refused("invalid", f"json_schema is not JSON: {exc}") from None
        if not isinstance(schema, dict):
            raise Refused("invalid", "json_schema is not a JSON object")
        return schema

    def _key(self, req: models_pb2.EscalateRequest, schema: dict[str, object] | None) -> str | None:
        """This hub's cache key for ``req``; None before the model is loaded (nothing is cached yet)."""
        brain = self.model.loaded
        if brain is None:
            return None
        return context_key(req.prompt, schema_text(schema), req.max_tokens, brain.fingerprint)

    def cached(
        self, req: models_pb2.EscalateRequest, schema: dict[str, object] | None
    ) -> CachedAnswer | None:
        key = self._key(req, schema)
        found = self.cache.get(key) if key is not None else None
        if key is None:
            self.cache.misses += 1
        self.metrics.cache.labels("hit" if found else "miss").inc()
        return found

    # serving ---------------------------------------------------------------------------------------
    async def _respond(self, msg: Msg, out: models_pb2.EscalateReply, outcome: str, received: float) -> None:
        self.metrics.requests.labels(outcome).inc()
        self.metrics.latency.observe(time.monotonic() - received)
        if not msg.reply:
            return
        try:
            await msg.respond(out.SerializeToString())
        except Exception as exc:  # disconnected: the edge's timeout answers
            log.warning("escalation reply on %s not sent: %s", msg.subject, exc)

    async def _on_msg(self, msg: Msg) -> None:
        received = time.monotonic()
        try:
            device_id = subjects.parse_escalation(msg.subject)
            req, schema = self.check(msg.data)
            found = self.cached(req, schema)
        except ValueError as exc:  # a subject this hub does not write (parse_escalation)
            await self._respond(msg, reply(error=f"invalid subject: {exc}"), "invalid", received)
            return
        except Refused as exc:
            await self._respond(msg, reply(error=exc.error), exc.outcome, received)
            return
        if found is not None:
            out = reply(
                text=found.text, prompt_tokens=found.prompt_tokens,
                completion_tokens=found.completion_tokens, cached=True, model=found.model,
            )  # fmt: skip
            await self._respond(msg, out, "cached", received)
            return
        if not self.queue.put(device_id, Pending(msg, req, schema, received)):
            why = f"busy: {self.queue.waiting(device_id)} of this device's requests wait already"
            await self._respond(msg, reply(error=why), "busy", received)

    async def _answer(self, p: Pending) -> tuple[models_pb2.EscalateReply, str]:
        """Run one request on the model (the caller holds its turn)."""
        req = p.request
        deadline_ms = req.deadline_ms or self.cfg.default_deadline_ms
        waited_ms = (time.monotonic() - p.received) * 1000
        if waited_ms >= deadline_ms:
            return reply(error=f"deadline: waited {waited_ms:.0f} ms of {deadline_ms}",
                         queue_ms=waited_ms), "deadline"  # fmt: skip
        started = time.monotonic()
        try:
            gate = await self.model.gate()
            done = await gate.complete(req.prompt, json_schema=p.schema, max_tokens=req.max_tokens)
        except Exception as exc:  # the model file missing, the prompt too long for its context
            log.warning("escalation from agent %s failed: %s", req.agent_id, exc)
            return reply(error=f"the hub's model failed: {type(exc).__name__}: {exc}",
                         queue_ms=waited_ms), "failed"  # fmt: skip
        fingerprint = gate.brain.fingerprint
        key = context_key(req.prompt, schema_text(p.schema), req.max_tokens, fingerprint)
        self.cache.put(key, CachedAnswer(done.text, done.prompt_tokens, done.completion_tokens, fingerprint))
        out = reply(
            text=done.text, prompt_tokens=done.prompt_tokens, completion_tokens=done.completion_tokens,
            model=fingerprint, queue_ms=waited_ms, compute_ms=(time.monotonic() - started) * 1000,
        )  # fmt: skip
        return out, "answered"

    async def _work(self) -> None:
        while True:
            _, pending = await self.queue.get()
            try:
                out, outcome = await self._answer(pending)
            except asyncio.CancelledError:
                await self._respond(
                    pending.msg, reply(error="the hub is stopping"), "stopping", pending.received
                )
                raise
            await self._respond(pending.msg, out, outcome, pending.received)

    async def run(self, stop: asyncio.Event) -> None:
        sub = await self.nc.subscribe(subjects.ALL_ESCALATION, queue=QUEUE, cb=self._on_msg)
        worker = asyncio.create_task(self._work(), name="escalation-worker")
        try:
            await stop.wait()
        finally:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # the connection is already closing
                log.debug("escalation subscription: %s", exc)
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
            while (left := self.queue.take()) is not None:
                await self._respond(
                    left[1].msg, reply(error="the hub is stopping"), "stopping", left[1].received
                )
