"""Builds the source of each kind of trigger (one module per kind), and the backoff they share."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .base import Sink, Source
from .config import CronTrigger, ModbusTrigger, MqttTrigger, NatsTrigger, Trigger, WebhookTrigger

if TYPE_CHECKING:
    from .runner import TriggerRunner


def build_source(trigger: Trigger, sink: Sink, runner: TriggerRunner) -> Source:
    """The source that feeds ``sink`` with ``trigger``'s events."""
    if isinstance(trigger, CronTrigger):
        from .cron import CronSource

        return CronSource(trigger, sink)
    if isinstance(trigger, MqttTrigger):
        from .mqtt import MqttSource

        return MqttSource(trigger, sink)
    if isinstance(trigger, ModbusTrigger):
        from .modbus import ModbusSource

        return ModbusSource(trigger, sink)
    if isinstance(trigger, NatsTrigger):
        from .nats import NatsSource

        return NatsSource(trigger, sink, runner.nats, runner.device_id)
    assert isinstance(trigger, WebhookTrigger)
    from .webhook import WebhookSource

    return WebhookSource(trigger, sink)


class Backoff:
    """Waits between reconnects: 0.5 s doubling to ``cap`` s; ``reset`` once connected."""

    def __init__(self, cap: float = 30.0) -> None:
        self.cap = cap
        self.delay = 0.5

    async def wait(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self.cap)

    def reset(self) -> None:
        self.delay = 0.5
