"""An agent's mind-log as the hub received it: its step events, read back from the events stream
(``TraceAgent``), paged by stream sequence, without a stale copy's steps (``fence``).

Applied events are purged after ``[retention] events_days`` (``hub/retention.py``): a trace whose
events are all gone is refused as expired (NOT_FOUND, saying so), never answered with an empty page;
one partly purged starts at the oldest step kept."""

from __future__ import annotations

import asyncio
import contextlib

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from edgehub.protocol import subjects
from edgehub.protocol.errors import ErrorCode
from edgehub.protocol.v1 import events_pb2, hub_pb2

from ..errors import Refused
from .agents import AgentRegistry, fence

MAX_PAGE = 1000
DEFAULT_PAGE = 100
FETCH_WAIT_S = 0.5


def start_of(token: str) -> int:
    """The stream sequence a page token names ('' the first), else INVALID_ARGUMENT (a clear message,
    whatever the token holds: no parser's internals, no echo)."""
    if not token:
        return 1
    start = int(token) if token.isascii() and token.isdecimal() and len(token) <= 19 else 0
    if start < 1:
        raise Refused(ErrorCode.INVALID_ARGUMENT, "page_token: not one this hub gave (use next_page_token)")
    return start


class Traces:
    """Pages of agents' step events from the ``EVENTS`` stream."""

    def __init__(self, js: JetStreamContext, agents: AgentRegistry, *, keep_days: float = 30.0) -> None:
        self.js = js
        self.agents = agents
        self.keep_days = keep_days
        """How long applied events are kept (named in the "expired" answer)."""

    async def page(self, agent_id: str, size: int, token: str) -> hub_pb2.TraceAgentResponse:
        """At most ``size`` events (default 100, max 1000) from ``token`` (a stream sequence; '' from
        the start); ``next_page_token`` is set when the page was full."""
        start = start_of(token)
        record = await self.agents.require(agent_id)
        size = min(size or DEFAULT_PAGE, MAX_PAGE)
        sub = await self.js.pull_subscribe(
            subjects.agent_events(agent_id),
            stream=subjects.EVENTS_STREAM,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=start,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=30,
            ),
        )
        out = hub_pb2.TraceAgentResponse()
        last = fetched = 0
        try:
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                for msg in await sub.fetch(size, timeout=FETCH_WAIT_S):
                    fetched += 1
                    last = msg.metadata.sequence.stream
                    event = events_pb2.EdgeEvent.FromString(msg.data)
                    if event.WhichOneof("body") != "step":  # the agent's episodes travel beside its steps
                        continue
                    if fence(record, event):  # a stale copy's step (dead-lettered when it arrived)
                        continue
                    out.events.append(event.step)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if fetched == size:
            out.next_page_token = str(last + 1)
        elif not out.events and not token and record.last_event and await self._purged():
            raise Refused(
                ErrorCode.NOT_FOUND,
                f"the trace of agent {agent_id} expired: the hub keeps agents' events {self.keep_days:g} "
                "days after they arrive ([retention] events_days)",
            )
        return out

    async def _purged(self) -> bool:
        """Events were purged from the stream (its first sequence is past 1)."""
        return int((await self.js.stream_info(subjects.EVENTS_STREAM)).state.first_seq) > 1
