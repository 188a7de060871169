"""The only place NATS subjects and JetStream names are built.

Subjects carry the device (and, for events, the agent) so permissions and queries can be scoped::

    edgehub.ev.<device>.<agent>     events from an edge (EdgeEvent)            stream EDGEHUB_EVENTS
    edgehub.cmd.<device>            commands to an edge                        stream EDGEHUB_COMMANDS
    edgehub.dlq.<source>            messages that could not be processed       stream EDGEHUB_DEADLETTER
    edgehub.dlq.edge.<device>       ... that a device could not process        stream EDGEHUB_DEADLETTER
    edgehub.kg.<device>             a device's L4 knowledge queries (request/reply, core NATS)
    edgehub.esc.<device>            a device's steps escalated to the hub's model (request/reply)

Ids become single subject tokens: every UTF-8 byte that is not printable ASCII, and the characters NATS
treats specially (``.``, ``*``, ``>``) and ``%`` itself, are percent-encoded, so ``dev.1`` is the token
``dev%2E1`` and can never widen a subscription or spill into the next token. The encoding is injective
over all strings (``untoken`` inverts it) and leaves valid ids (``edgehub.protocol.ids``) as they were.
"""

from __future__ import annotations

import re

from .ids import DEVICE_ID_MAX, ID_MAX, InvalidId, check_id, shown

PREFIX = "edgehub"
EVENTS_STREAM = "EDGEHUB_EVENTS"
COMMANDS_STREAM = "EDGEHUB_COMMANDS"
DEADLETTER_STREAM = "EDGEHUB_DEADLETTER"

_SAFE = frozenset(range(0x21, 0x7F)) - {ord(c) for c in ".*>%"}
"""Bytes that stand for themselves in a token: printable ASCII but NATS' special characters and ``%``."""


def token(value: str) -> str:
    """``value`` as one safe subject token."""
    if not value:
        raise ValueError("subject tokens cannot be empty")
    return "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in value.encode())


def untoken(value: str) -> str:
    """The string ``token`` made ``value`` from."""
    raw = re.sub(rb"%([0-9A-F]{2})", lambda m: bytes([int(m.group(1), 16)]), value.encode())
    return raw.decode(errors="replace")


def events(device_id: str, agent_id: str) -> str:
    return f"{PREFIX}.ev.{token(device_id)}.{token(agent_id)}"


def device_events(device_id: str) -> str:
    """Filter for every event of one device."""
    return f"{PREFIX}.ev.{token(device_id)}.*"


def agent_events(agent_id: str) -> str:
    """Filter for every event of one agent, whichever device sent it."""
    return f"{PREFIX}.ev.*.{token(agent_id)}"


ALL_EVENTS = f"{PREFIX}.ev.>"


def commands(device_id: str) -> str:
    return f"{PREFIX}.cmd.{token(device_id)}"


ALL_COMMANDS = f"{PREFIX}.cmd.>"


def deadletter(source: str) -> str:
    return f"{PREFIX}.dlq.{token(source)}"


def device_deadletter(device_id: str) -> str:
    """Dead letters a device reports (commands it could not decode): one subject per device."""
    return f"{PREFIX}.dlq.edge.{token(device_id)}"


def device_trigger(device_id: str, subject: str = ">") -> str:
    """Where the hub (or an operator) publishes events for the device's ``nats`` triggers:
    ``edgehub.trigger.<device>.<subject>``; ``subject`` is dot-separated tokens the trigger config
    checked (``>``: all of them, what the device may subscribe to)."""
    return f"{PREFIX}.trigger.{token(device_id)}.{subject}"


ALL_DEADLETTER = f"{PREFIX}.dlq.>"


def knowledge(device_id: str) -> str:
    """Where a device sends its L4 knowledge queries (the hub answers, queue group ``edgehub-kg``)."""
    return f"{PREFIX}.kg.{token(device_id)}"


ALL_KNOWLEDGE = f"{PREFIX}.kg.*"


def escalation(device_id: str) -> str:
    """Where a device asks the hub's model for a step (the hub answers, queue group ``edgehub-esc``)."""
    return f"{PREFIX}.esc.{token(device_id)}"


ALL_ESCALATION = f"{PREFIX}.esc.*"


def _id_token(part: str, field: str) -> str:
    """The id a subject token holds; ValueError unless it is a valid id written as ``token`` writes it."""
    value = untoken(part)
    try:
        check_id(value, field, max_len=DEVICE_ID_MAX if field == "device_id" else ID_MAX)
    except InvalidId as exc:
        raise ValueError(exc.message) from None
    if token(value) != part:
        raise ValueError(f"{field}: not written as this hub writes ids")
    return value


def parse_knowledge(subject: str) -> str:
    """The device_id of a knowledge subject; ValueError if it is not one (or names no valid id)."""
    parts = subject.split(".")
    if len(parts) != 3 or parts[:2] != [PREFIX, "kg"]:
        raise ValueError(f"not a knowledge subject: {shown(subject, 80)}")
    return _id_token(parts[2], "device_id")


def parse_escalation(subject: str) -> str:
    """The device_id of an escalation subject; ValueError if it is not one (or names no valid id)."""
    parts = subject.split(".")
    if len(parts) != 3 or parts[:2] != [PREFIX, "esc"]:
        raise ValueError(f"not an escalation subject: {shown(subject, 80)}")
    return _id_token(parts[2], "device_id")


def parse_events(subject: str) -> tuple[str, str]:
    """(device_id, agent_id) of an events subject; ValueError if it is not one (or names no valid id)."""
    parts = subject.split(".")
    if len(parts) != 4 or parts[:2] != [PREFIX, "ev"]:
        raise ValueError(f"not an events subject: {shown(subject, 80)}")
    return _id_token(parts[2], "device_id"), _id_token(parts[3], "agent_id")
