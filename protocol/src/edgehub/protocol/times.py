"""Times on the wire (``google.protobuf.Timestamp``): checked where a message enters, like ids.

protobuf parses any ``seconds`` and ``nanos`` into a Timestamp, but converting one outside its range
(``ToMilliseconds``, ``ToDatetime``: seconds of years 1 to 9999, nanos 0 to 999,999,999) raises
``ValueError`` wherever the code reads it. A device's event whose step time had negative nanos was
applied to the agent registry, then refused by the goal intake that read the time (found by the
``events`` fuzz target): checked on receipt, such a message is refused whole instead.
"""

from __future__ import annotations

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from .errors import EdgehubError, ErrorCode

SECONDS_MIN = -62_135_596_800
"""0001-01-01T00:00:00Z, the earliest a Timestamp may hold."""
SECONDS_MAX = 253_402_300_799
"""9999-12-31T23:59:59Z, the latest."""
NANOS_MAX = 999_999_999


class InvalidTime(EdgehubError):
    """A Timestamp outside its range (``INVALID_ARGUMENT``)."""

    code = ErrorCode.INVALID_ARGUMENT


def check_times(message: Message) -> None:
    """Every set Timestamp of ``message`` and of the messages it holds is within range, else
    ``InvalidTime`` naming the field."""
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            holds_messages = field.message_type.fields_by_name["value"].message_type is not None
            values = list(value.values()) if holds_messages else []
        else:
            values = value if field.is_repeated else [value]
        for inner in values:
            if isinstance(inner, Timestamp):
                _check(inner, field.name)
            else:
                check_times(inner)


def _check(time: Timestamp, field: str) -> None:
    if not SECONDS_MIN <= time.seconds <= SECONDS_MAX or not 0 <= time.nanos <= NANOS_MAX:
        raise InvalidTime(f"{field}: not a time (seconds {time.seconds}, nanos {time.nanos})")
