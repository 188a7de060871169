"""The only place NATS subjects and JetStream names are built.

Subjects carry the device (and, for events, the agent) so permissions and queries can be scoped::

    edgehub.ev.<device>.<agent>     events from an edge (EdgeEvent)            stream EDGEHUB_EVENTS
    edgehub.cmd.<device>            commands to an edge                        stream EDGEHUB_COMMANDS
    edgehub.dlq.<source>            messages that could not be processed       stream EDGEHUB_DEADLETTER
    edgehub.dlq.edge.<device>       ... that a device could not process        stream EDGEHUB_DEADLETTER
    edgehub.kg.<device>             a device's L4 knowledge queries (request/reply, core NATS)

Ids become single subject tokens: characters NATS treats specially (``.``, ``*``, ``>``, spaces and
``%`` itself) are percent-encoded, so ``dev.1`` is the token ``dev%2E1`` and can never widen a
subscription or spill into the next token.
"""

from __future__ import annotations

import re

PREFIX = "edgehub"
EVENTS_STREAM = "EDGEHUB_EVENTS"
COMMANDS_STREAM = "EDGEHUB_COMMANDS"
DEADLETTER_STREAM = "EDGEHUB_DEADLETTER"

_SPECIAL = re.compile(r"[.*>%\s]")


def token(value: str) -> str:
    """``value`` as one safe subject token."""
    if not value:
        raise ValueError("subject tokens cannot be empty")
    return _SPECIAL.sub(lambda m: f"%{ord(m.group()):02X}", value)


def untoken(value: str) -> str:
    return re.sub(r"%([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), value)


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


ALL_DEADLETTER = f"{PREFIX}.dlq.>"


def knowledge(device_id: str) -> str:
    """Where a device sends its L4 knowledge queries (the hub answers, queue group ``edgehub-kg``)."""
    return f"{PREFIX}.kg.{token(device_id)}"


ALL_KNOWLEDGE = f"{PREFIX}.kg.*"


def parse_knowledge(subject: str) -> str:
    """The device_id of a knowledge subject; ValueError if it is not one."""
    parts = subject.split(".")
    if len(parts) != 3 or parts[:2] != [PREFIX, "kg"]:
        raise ValueError(f"not a knowledge subject: {subject!r}")
    return untoken(parts[2])


def parse_events(subject: str) -> tuple[str, str]:
    """(device_id, agent_id) of an events subject; ValueError if it is not one."""
    parts = subject.split(".")
    if len(parts) != 4 or parts[:2] != [PREFIX, "ev"]:
        raise ValueError(f"not an events subject: {subject!r}")
    return untoken(parts[2]), untoken(parts[3])
