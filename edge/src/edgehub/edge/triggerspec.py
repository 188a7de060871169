"""``[[triggers]]``: what a site engineer writes to have goals started by the site (docs/triggers.md).

One table per trigger; ``kind`` picks its source (``cron``, ``mqtt``, ``modbus``, ``nats``,
``webhook``). Every trigger has the same gate (``condition``, ``dedupe_key``/``dedupe_s``,
``rate_limit``, ``cooldown_s``) and the same agent settings as a submitted goal (``goal``, ``tools``,
budget). Checked when the config loads: ids, templates (``goaltemplate.py``), schedules, time zones.
"""

from __future__ import annotations

import zoneinfo
from typing import Annotated, Literal
from urllib.parse import urlsplit

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgehub.protocol.ids import InvalidId, check_id
from edgehub.protocol.v1 import agent_pb2

from .goaltemplate import GoalTemplate, TemplateError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Op = Literal[">", ">=", "<", "<=", "==", "!="]


class Condition(_Section):
    """A test of one field of the event's payload, e.g. ``{ field = "pressure", op = ">", value = 8.5 }``."""

    field: str = Field(min_length=1, max_length=200)
    """Dotted path into the payload (``line.pressure``; a list index is a number: ``values.0``)."""
    op: Op
    value: float | bool | str
    """Numbers compare as numbers (a numeric string in the payload counts); strings only with == and !=."""

    @model_validator(mode="after")
    def _string_ops(self) -> Condition:
        if isinstance(self.value, str | bool) and self.op not in ("==", "!="):
            raise ValueError(f"condition {self.field!r}: {self.value!r} compares only with == or !=")
        return self


class _Trigger(_Section):
    id: str
    """Names the trigger in records, metrics and the CLI (an id: letters, digits, ``_.-``)."""
    enabled: bool = True
    goal: str = Field(min_length=1, max_length=4000)
    """The goal's template: ``$name`` / ``${payload.pressure}`` filled from the event (``goaltemplate``)."""
    tools: list[str] | None = None
    """The only tools the agent may call besides ``finish`` (None: every tool), as ``agent run --tools``."""
    max_steps: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    max_tool_calls: int | None = Field(None, ge=1)
    max_wall_seconds: float | None = Field(None, gt=0)
    """The agent's budget; unset: ``[agent]``'s."""
    condition: Condition | None = None
    """Only events whose payload passes it start anything (None: every event)."""
    dedupe_key: str = Field("", max_length=400)
    """Template of the key that makes events "the same" (``${payload.alarm_id}``); empty: every event of
    this trigger is the same."""
    dedupe_s: float = Field(0.0, ge=0)
    """An event whose key started an agent less than this long ago starts nothing (0: off)."""
    rate_limit: int | None = Field(None, ge=1)
    """At most this many agents started per minute (sliding 60 s), whatever their keys."""
    cooldown_s: float = Field(0.0, ge=0)
    """After this trigger started an agent, nothing starts for this long (counted from the start)."""

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        try:
            return check_id(value, "trigger id", max_len=64)
        except InvalidId as exc:
            raise ValueError(str(exc)) from None

    @field_validator("goal", "dedupe_key")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            GoalTemplate(value)
        except TemplateError as exc:
            raise ValueError(str(exc)) from None
        return value

    def budget(self) -> agent_pb2.Budget | None:
        """The agent's budget (None: ``[agent]``'s); a field left unset takes ``[agent]``'s too."""
        fields = {
            "max_steps": self.max_steps,
            "max_tokens": self.max_tokens,
            "max_tool_calls": self.max_tool_calls,
            "max_wall_seconds": self.max_wall_seconds,
        }
        if all(v is None for v in fields.values()):
            return None
        budget = agent_pb2.Budget()
        for name, value in fields.items():
            if value is not None:
                setattr(budget, name, value)
        return budget

    def source(self) -> str:
        """Where its events come from, in one line (the CLI's listing)."""
        raise NotImplementedError


class CronTrigger(_Trigger):
    """Fires on a schedule; the event's payload is ``{ scheduled_at = "<ISO time>" }``."""

    kind: Literal["cron"]
    schedule: str
    """A cron expression (``0 2 * * *``: at 02:00), read by croniter."""
    timezone: str = "UTC"
    """The IANA zone the schedule is read in (``Europe/Berlin``)."""

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        if not croniter.is_valid(value):
            raise ValueError(f"not a cron expression: {value!r}")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone: {value!r}") from None
        return value

    def source(self) -> str:
        return f"cron {self.schedule!r} {self.timezone}"


class MqttTrigger(_Trigger):
    """Fires on each message matching ``topic``; the payload is the message's JSON."""

    kind: Literal["mqtt"]
    broker: str = "mqtt://127.0.0.1:1883"
    """``mqtt://host:port`` (``mqtts://`` for TLS with the system's CAs)."""
    topic: str = Field(min_length=1, max_length=500)
    """A topic filter (``plant/+/pressure``, ``alarms/#``)."""
    username: str | None = None
    password_env: str | None = None
    """Environment variable holding the broker password (never the password itself in the file)."""

    @field_validator("broker")
    @classmethod
    def _broker(cls, value: str) -> str:
        url = urlsplit(value)
        if url.scheme not in ("mqtt", "mqtts") or not url.hostname:
            raise ValueError(f"broker: {value!r} is not mqtt://host[:port] or mqtts://host[:port]")
        return value

    def source(self) -> str:
        return f"mqtt {self.broker} {self.topic}"


class ModbusTrigger(_Trigger):
    """Polls one register or coil over Modbus TCP; fires when ``condition`` becomes true (the transition
    into it, not each poll while it holds). The payload is ``{ value = <int or bool>, address = <n> }``."""

    kind: Literal["modbus"]
    host: str = Field(min_length=1)
    port: int = Field(502, ge=1, le=65535)
    unit: int = Field(1, ge=0, le=247)
    """The Modbus device (unit/slave) id."""
    table: Literal["holding", "input", "coil", "discrete"] = "holding"
    address: int = Field(ge=0, le=65535)
    poll_s: float = Field(1.0, gt=0)
    timeout_s: float = Field(3.0, gt=0)

    @model_validator(mode="after")
    def _needs_condition(self) -> ModbusTrigger:
        if self.condition is None:
            raise ValueError(
                f"trigger {self.id}: a modbus trigger needs a condition (it fires on crossing it)"
            )
        return self

    def source(self) -> str:
        where = f"{self.host}:{self.port} unit {self.unit}"
        return f"modbus {where} {self.table} {self.address} every {self.poll_s:g}s"


class NatsTrigger(_Trigger):
    """Fires on each message to ``edgehub.trigger.<device>.<subject>`` on the device's hub connection
    (the hub or an operator publishes there); the payload is the message's JSON."""

    kind: Literal["nats"]
    subject: str = Field(pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*(\.>)?$", max_length=200)
    """Below the device's trigger subjects: ``inspect`` or ``line3.alarm``; ``>`` ends a wildcard."""

    def source(self) -> str:
        return f"nats edgehub.trigger.<device>.{self.subject}"


class WebhookTrigger(_Trigger):
    """A local HTTP endpoint: ``POST <path>`` with ``Authorization: Bearer <token>`` and a JSON body
    (the payload). Each webhook trigger listens on its own port."""

    kind: Literal["webhook"]
    bind: str = "127.0.0.1"
    """Loopback by default; another address exposes it to the network (the token still guards it)."""
    port: int = Field(ge=0, le=65535)
    """0: any free port (tests)."""
    path: str = Field("/", pattern=r"^/[A-Za-z0-9_./-]*$")
    token_file: str | None = None
    """File holding the bearer token (its first line)."""
    token_env: str | None = None
    """Environment variable holding the bearer token."""
    max_body_bytes: int = Field(65536, ge=16, le=16 * 2**20)

    @model_validator(mode="after")
    def _token(self) -> WebhookTrigger:
        if (self.token_file is None) == (self.token_env is None):
            raise ValueError(f"trigger {self.id}: a webhook needs exactly one of token_file or token_env")
        return self

    def source(self) -> str:
        return f"webhook http://{self.bind}:{self.port}{self.path}"


Trigger = Annotated[
    CronTrigger | MqttTrigger | ModbusTrigger | NatsTrigger | WebhookTrigger, Field(discriminator="kind")
]
"""One ``[[triggers]]`` table."""


def check_unique(triggers: list[Trigger]) -> list[Trigger]:
    """``triggers`` when no two share an id, else ValueError naming it."""
    seen: set[str] = set()
    for t in triggers:
        if t.id in seen:
            raise ValueError(f"two triggers have the id {t.id!r}")
        seen.add(t.id)
    return triggers
