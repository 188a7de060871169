"""Identifiers (device, agent, goal, task, migration, approval, command ids, API token names): the one
rule an id must satisfy, and how ids become names in NATS.

Every id that enters from outside (an API request, a CLI argument, a command an edge receives, an event
the hub applies) is checked here (``check_id``, ``check_device_id``) before it is used: at most
``ID_MAX`` characters (``DEVICE_ID_MAX`` for a device, whose id is its certificate's common name) of
``ID_ALPHABET``. An invalid id is an ``InvalidId`` (``INVALID_ARGUMENT``) whose message names the field
and shows at most a short prefix of the input, so an oversized value is never echoed back.

Ids reach subjects (``subjects.token``), KV keys (``kv_key``) and consumer names
(``edgehub.sync.commands.consumer_name``); each encoding is injective over all strings, so two different
ids never share a name, and leaves the ids valid today unchanged where NATS allows them.
"""

from __future__ import annotations

import re

from google.protobuf.message import Message

from .errors import EdgehubError, ErrorCode

ID_MAX = 128
"""Characters of an id. The longest the hub makes itself: a planner agent id ``{goal}-{task}-{attempt}``
(``g-<12 hex>``, a task id of at most 32, an attempt number: 51), one level of subgoal deeper 88."""
DEVICE_ID_MAX = 64
"""Characters of a device id: it is the common name of the device's certificate (X.509: at most 64)."""
ID_ALPHABET = "letters, digits, '_', '.' and '-', starting with a letter or digit"

NAME_PATTERN = rf"^[A-Za-z0-9][A-Za-z0-9_.-]{{0,{DEVICE_ID_MAX - 1}}}$"
"""What an operator may name a device or a hub process in its config: a device id."""
ID_PATTERN = rf"^[A-Za-z0-9][A-Za-z0-9_.-]{{0,{ID_MAX - 1}}}$"
"""Any other id."""

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_SHOWN = 16
"""Characters of an invalid value an error message shows (never the whole input)."""


class InvalidId(EdgehubError):
    """An id that breaks the rule (``INVALID_ARGUMENT``)."""

    code = ErrorCode.INVALID_ARGUMENT


def shown(value: str, limit: int = _SHOWN) -> str:
    """A short, printable prefix of ``value`` for an error message (``repr`` escapes control chars)."""
    return repr(value[:limit]) + ("..." if len(value) > limit else "")


def check_id(value: str, field: str, *, max_len: int = ID_MAX) -> str:
    """``value`` when it is a valid id, else ``InvalidId`` naming ``field``."""
    if not value:
        raise InvalidId(f"{field} is required")
    if len(value) > max_len:
        raise InvalidId(f"{field}: {len(value)} characters, at most {max_len} allowed")
    if not _ID.fullmatch(value):
        raise InvalidId(f"{field}: {shown(value)} is not an id ({ID_ALPHABET})")
    return value


def check_device_id(value: str, field: str = "device_id") -> str:
    """``value`` when it is a valid device id (``check_id`` with ``DEVICE_ID_MAX``)."""
    return check_id(value, field, max_len=DEVICE_ID_MAX)


def is_id(value: str, *, max_len: int = ID_MAX) -> bool:
    return len(value) <= max_len and _ID.fullmatch(value) is not None


_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_sha256(value: str, field: str = "sha256") -> str:
    """``value`` when it is a SHA-256 in lowercase hex (how models are named), else ``InvalidId``."""
    if not _SHA256.fullmatch(value):
        raise InvalidId(f"{field}: {shown(value)} is not a SHA-256 (64 lowercase hex digits)")
    return value


_KV_KEY = re.compile(r"[-/_=.a-zA-Z0-9]+")
_KV_ESCAPE = "="
"""Marks an encoded key. No id starts with it, so every valid id stays its own key."""


def _plain_key(id_: str) -> bool:
    """Whether ``id_`` is a key NATS accepts as it is and cannot be mistaken for an encoded one."""
    return (
        _KV_KEY.fullmatch(id_) is not None
        and not id_.startswith(_KV_ESCAPE)
        and not id_.startswith(".")
        and not id_.endswith(".")
        and ".." not in id_
    )


def kv_key(id_: str) -> str:
    """``id_`` as a JetStream KV key: itself when NATS accepts it as a key and it does not start with
    ``=``, else ``=`` and its UTF-8 hex. Injective over all strings (the two forms cannot meet)."""
    return id_ if _plain_key(id_) else _KV_ESCAPE + id_.encode().hex()


def id_of_key(key: str) -> str:
    """The id ``kv_key`` made ``key`` from (the inverse: a key read back from a bucket names its id)."""
    if key.startswith(_KV_ESCAPE):
        try:
            id_ = bytes.fromhex(key[1:]).decode()
        except ValueError:
            return key
        if kv_key(id_) == key:
            return id_
    return key


DEVICE_FIELDS = frozenset({"device_id", "to_device", "source_device", "target_device"})
"""Fields of the protocol's messages that hold a device id."""
TASK_FIELDS = frozenset({"task_id"})
"""Fields that hold a task: its id, or ``GOAL/TASK`` (what the planner sends an edge), each part an id."""
ID_FIELDS = (
    DEVICE_FIELDS
    | TASK_FIELDS
    | {"agent_id", "goal_id", "migration_id", "command_id", "subgoal_id", "rollout_id"}
)
"""Fields of the protocol's messages that hold an id (checked wherever a message enters)."""


HOLDER_KINDS = ("leaf", "nats")
"""Holders of NATS credentials other than devices, recorded (and revoked) as ``<kind>:<name>``: a site
gateway's leaf node (``edgehub hub leaf-config``) and an operator's natscli (``edgehub hub
nats-creds``). The ``:`` is outside the id alphabet, so no device id equals one."""
HOLDER_FIELDS = {"RevokeDeviceRequest": frozenset({"device_id"})}
"""Message fields that name any credential holder: a device id, or ``<kind>:<name>``."""


def holder(kind: str, name: str) -> str:
    """The record ``name`` of ``kind`` holds its NATS credentials under (``check_holder`` accepts it)."""
    assert kind in HOLDER_KINDS, kind
    return f"{kind}:{check_id(name, 'name', max_len=DEVICE_ID_MAX)}"


def check_holder(value: str, field: str = "device_id") -> str:
    """A device id, or ``<kind>:<name>`` of a ``HOLDER_KINDS`` with a device-id name; else ``InvalidId``."""
    kind, sep, name = value.partition(":")
    if sep and kind in HOLDER_KINDS:
        check_id(name, field, max_len=DEVICE_ID_MAX)
        return value
    return check_device_id(value, field)


def check_ids(message: Message, extra: frozenset[str] = frozenset()) -> None:
    """Check every set id field (``ID_FIELDS`` and ``extra``) of ``message`` and of the messages it
    holds; ``InvalidId`` naming the first bad one. Empty fields are left to the caller (required or not
    is its rule)."""
    for field, value in message.ListFields():
        if field.message_type is not None:
            values = value if field.is_repeated else [value]
            for inner in values if not field.message_type.GetOptions().map_entry else ():
                check_ids(inner, extra)
        elif field.name in HOLDER_FIELDS.get(message.DESCRIPTOR.name, ()):
            check_holder(value, field.name)
        elif field.name in ID_FIELDS or field.name in extra:
            values = value if field.is_repeated else [value]
            limit = DEVICE_ID_MAX if field.name in DEVICE_FIELDS else ID_MAX
            for one in values:
                _check_field(one, field.name, limit)


def _check_field(value: str, field: str, limit: int) -> None:
    parts = value.split("/", 1) if field in TASK_FIELDS and len(value) <= 2 * limit + 1 else [value]
    for part in parts:
        check_id(part, field, max_len=limit)
