"""Builds the source of each kind of trigger (one module per kind)."""

from __future__ import annotations

from collections.abc import Callable

from ..triggerspec import CronTrigger, ModbusTrigger, MqttTrigger, NatsTrigger, Trigger, WebhookTrigger
from .base import Sink, Source


def build_source(trigger: Trigger, sink: Sink, nats: Callable[[], object | None], device_id: str) -> Source:
    """The source that feeds ``sink`` with ``trigger``'s events (``nats``: the device's hub connection)."""
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

        return NatsSource(trigger, sink, nats, device_id)
    assert isinstance(trigger, WebhookTrigger)
    from .webhook import WebhookSource

    return WebhookSource(trigger, sink)
