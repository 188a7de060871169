"""Structure-aware inputs for the fuzz targets: protobuf messages of any type built field by field from
the fuzzer's bytes, following the message's descriptor, then serialised and, at the fuzzer's choice,
damaged on the wire.

libFuzzer mutates the bytes; the bytes decide every choice here (which fields are set, which oneof
member, each value, how the serialisation is damaged), so coverage feedback steers the choices and a
small change of the bytes is a small change of the message. This is what libprotobuf-mutator does in
C++ (its Python binding ``atheris-libprotobuf-mutator`` has no wheel and does not build here).

Values come from the whole range of each type (negative and huge integers, unknown enum numbers,
NaN and infinities, control characters, long strings) and, half of the time for strings, from
``words``: ids and names that the target's world knows, so a mutation reaches what an id decides
(another device's agent, a running goal's task) instead of dying at the first lookup.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from atheris import FuzzedDataProvider
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

M = TypeVar("M", bound=Message)
F = FieldDescriptor
MAX_DEPTH = 4
MAX_REPEATED = 4
LONG = 300
"""Characters of the longest fuzzed string (past every id bound of ``edgehub.protocol.ids``)."""

_INT_RANGES = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_FIXED64: (0, 2**64 - 1),
}
_SMALL = (0, 1, 2, 3, -1, 255, 256, 2**31 - 1, 2**32 - 1, 2**63 - 1, 2**64 - 1)
"""Edge values an integer field takes a quarter of the time (filtered by its type's range)."""


def text(fdp: FuzzedDataProvider, words: Sequence[str]) -> str:
    """A string: one of ``words``, a word with a suffix, or fuzzed text (short, sometimes long)."""
    choice = fdp.ConsumeIntInRange(0, 3)
    if words and choice == 0:
        return fdp.PickValueInList(list(words))
    if words and choice == 1:
        return fdp.PickValueInList(list(words)) + fdp.ConsumeUnicodeNoSurrogates(4)
    return fdp.ConsumeUnicodeNoSurrogates(LONG if fdp.ConsumeIntInRange(0, 15) == 0 else 24)


def _integer(fdp: FuzzedDataProvider, kind: int) -> int:
    low, high = _INT_RANGES[kind]
    if fdp.ConsumeIntInRange(0, 3) == 0:
        return fdp.PickValueInList([v for v in _SMALL if low <= v <= high])
    return fdp.ConsumeIntInRange(low, high)


def _scalar(fdp: FuzzedDataProvider, field: FieldDescriptor, words: Sequence[str]) -> object:
    kind = field.type
    if kind == F.TYPE_STRING:
        return text(fdp, words)
    if kind == F.TYPE_BYTES:
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
    if kind == F.TYPE_BOOL:
        return fdp.ConsumeBool()
    if kind in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
        value = fdp.ConsumeFloat()
        return value if kind == F.TYPE_DOUBLE or abs(value) < 3e38 or value != value else float("inf")
    if kind == F.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return fdp.PickValueInList(known) if fdp.ConsumeBool() else fdp.ConsumeIntInRange(-5, 2**31 - 1)
    return _integer(fdp, kind)


def fill(message: Message, fdp: FuzzedDataProvider, words: Sequence[str], depth: int = 0) -> None:
    """Set fields of ``message`` from the fuzzer's bytes (recursively, ``MAX_DEPTH`` levels)."""
    descriptor: Descriptor = message.DESCRIPTOR
    oneofs = {f.name for o in descriptor.oneofs for f in o.fields}
    for oneof in descriptor.oneofs:  # at most one member of each, as a sender would
        if fdp.ConsumeBool():
            _set(message, fdp.PickValueInList(list(oneof.fields)), fdp, words, depth)
    for field in descriptor.fields:
        if field.name not in oneofs and fdp.ConsumeBool():
            _set(message, field, fdp, words, depth)


def _set(
    message: Message, field: FieldDescriptor, fdp: FuzzedDataProvider, words: Sequence[str], depth: int
) -> None:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        target = getattr(message, field.name)
        key_field, value_field = (
            field.message_type.fields_by_name["key"],
            field.message_type.fields_by_name["value"],
        )
        for _ in range(fdp.ConsumeIntInRange(0, MAX_REPEATED)):
            key = _scalar(fdp, key_field, words)
            if value_field.message_type is not None:
                if depth < MAX_DEPTH:
                    fill(target[key], fdp, words, depth + 1)
            else:
                target[key] = _scalar(fdp, value_field, words)
        return
    if field.is_repeated:
        target = getattr(message, field.name)
        for _ in range(fdp.ConsumeIntInRange(0, MAX_REPEATED)):
            if field.message_type is not None:
                if depth < MAX_DEPTH:
                    fill(target.add(), fdp, words, depth + 1)
            else:
                target.append(_scalar(fdp, field, words))
        return
    if field.message_type is not None:
        if depth < MAX_DEPTH:
            inner = getattr(message, field.name)
            inner.SetInParent()
            fill(inner, fdp, words, depth + 1)
        return
    setattr(message, field.name, _scalar(fdp, field, words))


def build(kind: type[M], fdp: FuzzedDataProvider, words: Sequence[str] = ()) -> M:
    """A ``kind`` message from the fuzzer's bytes."""
    message = kind()
    fill(message, fdp, words)
    return message


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def damaged(data: bytes, fdp: FuzzedDataProvider) -> bytes:
    """``data`` as sent, or damaged on the wire: an unknown field appended (well-formed or not),
    truncated, a byte flipped, or other bytes altogether."""
    how = fdp.ConsumeIntInRange(0, 7)
    if how == 0:  # an unknown field of any wire type, well-formed
        number, wire = fdp.ConsumeIntInRange(1, 2**29 - 1), fdp.PickValueInList([0, 1, 2, 5])
        payload = {
            0: _varint(fdp.ConsumeIntInRange(0, 2**64 - 1)),
            1: fdp.ConsumeBytes(8).ljust(8, b"\0"),
            2: (lambda b: _varint(len(b)) + b)(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 32))),
            5: fdp.ConsumeBytes(4).ljust(4, b"\0"),
        }[wire]
        return data + _varint(number << 3 | wire) + payload
    if how == 1 and data:
        return data[: fdp.ConsumeIntInRange(0, len(data) - 1)]
    if how == 2 and data:
        at = fdp.ConsumeIntInRange(0, len(data) - 1)
        return data[:at] + bytes([data[at] ^ (1 << fdp.ConsumeIntInRange(0, 7))]) + data[at + 1 :]
    if how == 3:
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 256))
    return data


def wire(kind: type[Message], fdp: FuzzedDataProvider, words: Sequence[str] = ()) -> bytes:
    """A ``kind`` message from the fuzzer's bytes, serialised and maybe damaged (``damaged``)."""
    return damaged(build(kind, fdp, words).SerializeToString(), fdp)
