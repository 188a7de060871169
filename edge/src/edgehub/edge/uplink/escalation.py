"""The edge's side of escalation: asks the hub's model for a step (``EscalateRequest`` on
``edgehub.esc.<device>``, request/reply over the hub link's connection, so with the device's
credentials), with a cache of answers in memory.

- The prompt leaves the device PII-masked like its outgoing events (``[safety] pii_masking``); the
  tokens the hub's answer repeats are restored from this request's own masking before the action runs.
- The cache (``edgehub.sync.escalation.AnswerCache``) is keyed by the whole prompt, the schema,
  max_tokens and the fingerprint of the hub's model that answered last: a step whose context differs
  in anything, or a hub that changed its model, misses.
- It never waits longer than ``timeout_s``; no connection, no responder, a timeout, an unreadable reply
  or the hub's error are returned as the reason there is no answer (the agent's own action stands).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.errors import Error as NatsError
from opentelemetry.propagate import inject
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from edgehub.protocol import subjects
from edgehub.protocol.v1 import models_pb2
from edgehub.sync.escalation import ESCALATION_VERSION, AnswerCache, CachedAnswer, context_key, schema_text

from ..agent.base import HubAnswer
from ..config import EscalationConfig
from ..safety.pii import Scrubber, unmask
from ..store.base import VaultEntry

M = models_pb2
log = logging.getLogger("edgehub.edge.uplink.escalation")


class EscalationMetrics:
    """Escalations by reason and outcome, their latency, the cache's lookups and hit rate."""

    def __init__(self, registry: CollectorRegistry, device_id: str, cache: AnswerCache) -> None:
        self.device = device_id
        self.asked = Counter(
            "edgehub_edge_escalations",
            "Steps escalated to the hub's model, by reason and outcome",
            ["device", "reason", "outcome"],
            registry=registry,
        )
        self.latency = Histogram(
            "edgehub_edge_escalation_seconds",
            "Time to the hub's answer (or to giving up) for one escalated step",
            ["device"],
            buckets=(0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.cache = Counter(
            "edgehub_edge_escalation_cache", "Escalation cache lookups by result (hit, miss)",
            ["device", "result"], registry=registry,
        )  # fmt: skip
        ratio = Gauge("edgehub_edge_escalation_cache_hit_ratio", "Escalation cache hits over lookups",
                      ["device"], registry=registry)  # fmt: skip
        ratio.labels(device_id).set_function(lambda: cache.hit_rate)

    def outcome(self, reason: str, outcome: str) -> None:
        self.asked.labels(self.device, reason, outcome).inc()


class EscalationClient:
    """Asks the hub's model (``agent.base.Escalator``); ``connection()`` is the hub link's NATS client,
    or None while there is none."""

    def __init__(
        self,
        cfg: EscalationConfig,
        device_id: str,
        connection: Callable[[], Client | None],
        *,
        scrubber: Scrubber | None = None,
        metrics: CollectorRegistry | None = None,
    ) -> None:
        self.cfg = cfg
        self.device_id = device_id
        self.connection = connection
        self.scrubber = scrubber
        self.cache = AnswerCache(cfg.cache_entries)
        self.hub_model = ""
        """Fingerprint of the hub's model that answered last (part of the cache key)."""
        self.metrics = EscalationMetrics(metrics or CollectorRegistry(), device_id, self.cache)

    def key(self, prompt: str, schema: Mapping[str, object] | None, max_tokens: int) -> str:
        return context_key(prompt, schema_text(schema), max_tokens, self.hub_model)

    async def ask(
        self,
        *,
        agent_id: str,
        step: int,
        reason: str,
        prompt: str,
        schema: Mapping[str, object] | None,
        max_tokens: int,
        confidence: float | None,
    ) -> HubAnswer | str:
        started = time.perf_counter()
        key = self.key(prompt, schema, max_tokens)
        found = self.cache.get(key)
        self.metrics.cache.labels(self.device_id, "hit" if found else "miss").inc()
        if found is not None:
            return HubAnswer(
                found.text, 0, found.model, "device cache", (time.perf_counter() - started) * 1000
            )
        sealed: list[VaultEntry] = []
        masked = self.scrubber.mask(prompt, sealed) if self.scrubber is not None else prompt
        request = M.EscalateRequest(
            schema_version=ESCALATION_VERSION, agent_id=agent_id, step=step, reason=reason, prompt=masked,
            json_schema=schema_text(schema), max_tokens=max_tokens, confidence=confidence or 0.0,
            context_key=key, deadline_ms=int(self.cfg.timeout_s * 1000), traceparent=_traceparent(),
        )  # fmt: skip
        try:
            answer = await self._request(request)
        finally:
            self.metrics.latency.labels(self.device_id).observe(time.perf_counter() - started)
        if isinstance(answer, str):
            log.info("step %s/%d not escalated: %s", agent_id, step, answer)
            return answer
        text = self._unmask(answer.text, sealed)
        if answer.model and answer.model != self.hub_model:
            self.hub_model = answer.model  # a new hub model: what the cache holds no longer hits
            key = self.key(prompt, schema, max_tokens)
        tokens = 0 if answer.cached else answer.prompt_tokens + answer.completion_tokens
        self.cache.put(key, CachedAnswer(text, answer.prompt_tokens, answer.completion_tokens, answer.model))
        elapsed = (time.perf_counter() - started) * 1000
        return HubAnswer(text, tokens, answer.model, "hub cache" if answer.cached else "hub", elapsed)

    async def _request(self, request: models_pb2.EscalateRequest) -> models_pb2.EscalateReply | str:
        """The hub's reply, or why there is none."""
        nc = self.connection()
        if nc is None or not nc.is_connected:
            return "no connection to the hub"
        try:
            msg = await nc.request(
                subjects.escalation(self.device_id), request.SerializeToString(), timeout=self.cfg.timeout_s
            )
            reply = M.EscalateReply.FromString(msg.data)
        except TimeoutError:
            return f"no answer from the hub within {self.cfg.timeout_s:g} s"
        except NatsError as exc:  # no responder, connection closing
            return f"the hub is unreachable ({type(exc).__name__})"
        except DecodeError as exc:
            return f"unreadable answer from the hub ({exc})"
        if reply.error:
            return f"the hub refused: {reply.error}"
        if reply.schema_version != ESCALATION_VERSION:
            return (f"the hub answered in schema_version {reply.schema_version} "
                    f"(this device reads {ESCALATION_VERSION})")  # fmt: skip
        return reply

    def _unmask(self, text: str, sealed: list[VaultEntry]) -> str:
        if self.scrubber is None or not sealed:
            return text
        entries = {e.token: e for e in sealed}
        return unmask(text, entries.get, self.scrubber.key)


def _traceparent() -> str:
    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier.get("traceparent", "")
