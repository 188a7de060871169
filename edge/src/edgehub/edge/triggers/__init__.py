"""Triggers: goals started by the site (a schedule, MQTT, Modbus, NATS, a webhook), de-duplicated,
rate-limited, cooled down and recorded; see docs/triggers.md. What ``[[triggers]]`` holds is
``edgehub.edge.triggerspec`` (with the config), the goal templates ``edgehub.edge.goaltemplate``; here
``gate`` is the pure logic, ``runner`` the daemon's helper, one module per source."""

from ..goaltemplate import GoalTemplate, TemplateError
from ..triggerspec import (
    Condition,
    CronTrigger,
    ModbusTrigger,
    MqttTrigger,
    NatsTrigger,
    Trigger,
    WebhookTrigger,
)
from .gate import Gate, GateRules, Outcome, holds

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
