"""Triggers: goals started by the site (a schedule, MQTT, Modbus, NATS, a webhook), de-duplicated,
rate-limited, cooled down and recorded; see docs/triggers.md. ``config`` is what ``[[triggers]]`` holds,
``template`` and ``gate`` the pure logic, ``runner`` the daemon's helper, one module per source."""

from .config import (
    Condition,
    CronTrigger,
    ModbusTrigger,
    MqttTrigger,
    NatsTrigger,
    Trigger,
    WebhookTrigger,
)
from .gate import Gate, GateRules, Outcome, holds
from .template import GoalTemplate, TemplateError

__all__ = [
    "Condition",
    "CronTrigger",
    "Gate",
    "GateRules",
    "GoalTemplate",
    "ModbusTrigger",
    "MqttTrigger",
    "NatsTrigger",
    "Outcome",
    "TemplateError",
    "Trigger",
    "WebhookTrigger",
    "holds",
]
