"""A NATS subject on the device's hub connection: ``edgehub.trigger.<device>.<subject>``, which the
device may subscribe to and the hub (or an operator with its credentials) publish to."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from nats.aio.client import Client
from nats.aio.msg import Msg

from edgehub.protocol import subjects

from ..triggerspec import NatsTrigger
from .base import Sink

log = logging.getLogger("edgehub.edge.triggers")


class NatsSource:
    """Subscribes once the hub link has connected (nats-py keeps it across reconnects); without a hub
    it waits, logging once."""

    def __init__(
        self, trigger: NatsTrigger, sink: Sink, nats: Callable[[], object | None], device_id: str
    ) -> None:
        self.trigger = trigger
        self.sink = sink
        self.nats = nats
        self.subject = subjects.device_trigger(device_id, trigger.subject)

    async def run(self) -> None:
        warned = False
        while not isinstance(nc := self.nats(), Client):
            if not warned:
                log.info(
                    "trigger %s waits for the hub connection to subscribe %s", self.trigger.id, self.subject
                )
                warned = True
            await asyncio.sleep(0.5)
        sub = await nc.subscribe(self.subject, cb=self._take)
        try:
            await asyncio.Event().wait()  # until cancelled
        finally:
            if not nc.is_closed:
                await sub.unsubscribe()

    async def _take(self, msg: Msg) -> None:
        try:
            payload = json.loads(msg.data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self.sink.bad_payload(f"NATS message on {msg.subject} is not JSON: {exc}")
            return
        await self.sink.event(payload, {"subject": msg.subject})
