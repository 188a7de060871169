"""The one typed record store over JetStream KV: every service that keeps records in a bucket does it
through ``RecordStore``, and no other module opens a bucket (``tests/unit/test_layout.py``).

A store is one bucket of the topology (``streams.BUCKETS``) and a ``Codec`` that turns its records into
bytes and back, so a record's type and its one versioned serialisation live together. Keys are built
from ids by ``edgehub.protocol.ids.kv_key`` (an injective encoding), unless the store is told its ids
are keys already (token digests, lease names).

Writes that depend on what is stored are compare-and-set: ``update`` reads, applies a change and
writes only if nobody wrote in between, trying again a bounded number of times (``RecordConflict``
after that, retryable). ``watch`` follows the bucket: its records at the start, then every change.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Generic, Protocol, TypeVar

import nats.errors
from google.protobuf.message import DecodeError, Message
from nats.js import JetStreamContext
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from edgehub.protocol.errors import ErrorCode
from edgehub.protocol.ids import kv_key

from .errors import SyncError

log = logging.getLogger("edgehub.sync.records")
T = TypeVar("T")
M = TypeVar("M", bound=Message)
UPDATE_ATTEMPTS = 16
"""Compare-and-set rounds of one ``update`` before it gives up with ``RecordConflict``."""
JsonObject = dict[str, Any]
"""A JSON object as ``json.loads`` returns it: what an earlier release stored, read by a legacy decoder."""


class RecordConflict(SyncError):
    """Others kept writing the record between this process's read and write."""

    code = ErrorCode.ABORTED
    retryable = True


class RecordExists(SyncError):
    """``create`` of a key that holds a record."""

    code = ErrorCode.ALREADY_EXISTS


class RecordUnreadable(SyncError):
    """Stored bytes its codec cannot decode (corrupt, another type, a newer schema version)."""

    code = ErrorCode.FAILED_PRECONDITION


class Codec(Protocol[T]):
    """A record type's one serialisation."""

    def encode(self, value: T) -> bytes: ...

    def decode(self, data: bytes) -> T:
        """The record in ``data``; ``RecordUnreadable`` when it is not one."""
        ...


class ProtoCodec(Generic[M]):
    """Records as protobuf messages with a ``schema_version`` field: written at ``version``, read up to
    it. ``legacy`` reads what an earlier release stored in another format (the appended migration of
    that format), or returns None when the bytes are not that either."""

    def __init__(
        self, message: type[M], version: int, *, legacy: Callable[[bytes], M | None] | None = None
    ) -> None:
        self.message = message
        self.version = version
        self.legacy = legacy

    def encode(self, value: M) -> bytes:
        value.schema_version = self.version  # type: ignore[attr-defined]
        return value.SerializeToString()

    def decode(self, data: bytes) -> M:
        if self.legacy is not None and (old := self.legacy(data)) is not None:
            return old
        try:
            value = self.message.FromString(data)
        except DecodeError as exc:
            raise RecordUnreadable(f"not a {self.message.DESCRIPTOR.name}: {exc}") from None
        found = value.schema_version  # type: ignore[attr-defined]
        if found == 0 or found > self.version:
            raise RecordUnreadable(
                f"{self.message.DESCRIPTOR.name} schema version {found}; "
                f"this edgehub reads 1 to {self.version}"
            )
        return value


def json_legacy(convert: Callable[[JsonObject], M]) -> Callable[[bytes], M | None]:
    """A ``ProtoCodec`` legacy decoder for records an earlier release stored as JSON objects: ``convert``
    builds the message from the object (a KeyError, TypeError or ValueError there: ``RecordUnreadable``).
    Protobuf never writes a first byte ``{`` (field 15 as a group, a wire type proto3 does not use),
    so the two formats cannot be taken for each other."""

    def decode(data: bytes) -> M | None:
        if not data.startswith(b"{"):
            return None
        try:
            found = json.loads(data)
            if not isinstance(found, dict):
                raise TypeError("not a JSON object")
            return convert(found)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise RecordUnreadable(f"a JSON record of an earlier release, unreadable: {exc!r}") from None

    return decode


class TextCodec:
    """Records that are one short string (a lease's holder, a device's applied sequence)."""

    def encode(self, value: str) -> bytes:
        return value.encode()

    def decode(self, data: bytes) -> str:
        try:
            return data.decode()
        except UnicodeDecodeError as exc:
            raise RecordUnreadable(f"not text: {exc}") from None


@dataclass(frozen=True, slots=True)
class Stored(Generic[T]):
    """A record and where it stands in its bucket."""

    key: str
    value: T
    revision: int
    """The bucket stream's sequence of this write: what a compare-and-set names."""


class ChangeKind(Enum):
    PUT = "put"
    DELETE = "delete"
    """Deleted or purged (``value`` is None)."""
    UNREADABLE = "unreadable"
    """Written, but the codec cannot read it (``error`` says why)."""
    SYNCED = "synced"
    """The watch has delivered every record the bucket held when it started (then changes follow)."""


@dataclass(frozen=True, slots=True)
class Change(Generic[T]):
    kind: ChangeKind
    key: str = ""
    value: T | None = None
    revision: int = 0
    stored_at: float | None = None
    """When the server stored the write (unix seconds)."""
    error: str = ""


class Watch(Generic[T]):
    """A watch on a bucket (``RecordStore.watch``): its records at the start, a ``SYNCED`` change, then
    every write once."""

    def __init__(self, watcher: KeyValue.KeyWatcher, codec: Codec[T]) -> None:
        self._watcher = watcher
        self._codec = codec

    async def next(self, wait_s: float) -> Change[T] | None:
        """The next change, or None when none came within ``wait_s`` seconds."""
        try:
            entry = await self._watcher.updates(timeout=wait_s)
        except nats.errors.TimeoutError:
            return None
        if entry is None:
            return Change(ChangeKind.SYNCED)
        revision = int(entry.revision or 0)
        created = getattr(entry, "created", None)  # nats-py types it int; it is the message's datetime
        stored_at = created.timestamp() if created is not None and hasattr(created, "timestamp") else None
        if entry.operation in (KV_DEL, KV_PURGE):
            return Change(ChangeKind.DELETE, entry.key, None, revision, stored_at)
        try:
            value = self._codec.decode(entry.value or b"")
        except RecordUnreadable as exc:
            return Change(ChangeKind.UNREADABLE, entry.key, None, revision, stored_at, str(exc))
        return Change(ChangeKind.PUT, entry.key, value, revision, stored_at)


class RecordStore(Generic[T]):
    """The records of one bucket, typed by ``codec``; see the module docstring."""

    def __init__(self, js: JetStreamContext, bucket: str, codec: Codec[T], *, keyed: bool = True) -> None:
        self.js = js
        self.bucket = bucket
        self.codec = codec
        self.keyed = keyed
        """Ids are encoded into keys (``kv_key``); False: ids are keys already."""
        self._kv: KeyValue | None = None

    async def kv(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self.js.key_value(self.bucket)
        return self._kv

    def key(self, id_: str) -> str:
        return kv_key(id_) if self.keyed else id_

    # reads -----------------------------------------------------------------------------------------
    async def get(self, id_: str) -> Stored[T] | None:
        """The record of ``id_``; None when there is none (never written, deleted)."""
        key = self.key(id_)
        try:
            entry = await (await self.kv()).get(key)
        except KeyNotFoundError:  # KeyDeletedError too
            return None
        return Stored(key, self.codec.decode(entry.value or b""), int(entry.revision or 0))

    async def keys(self) -> list[str]:
        try:
            keys = await (await self.kv()).keys()
        except NoKeysError:
            return []
        return list(dict.fromkeys(keys))  # a key written while the listing runs can be listed twice

    async def list(self) -> list[Stored[T]]:
        """Every readable record (an unreadable one is logged and left out)."""
        kv = await self.kv()
        out = []
        for key in await self.keys():
            try:
                entry = await kv.get(key)
                out.append(Stored(key, self.codec.decode(entry.value or b""), int(entry.revision or 0)))
            except KeyNotFoundError:  # deleted meanwhile
                continue
            except RecordUnreadable as exc:
                log.warning("%s/%s left out: %s", self.bucket, key, exc)
        return out

    async def last_revision(self) -> int:
        """The bucket's last write (its stream's last sequence)."""
        return int((await (await self.kv()).status()).stream_info.state.last_seq)

    # writes ----------------------------------------------------------------------------------------
    async def put(self, id_: str, value: T) -> int:
        """Write unconditionally (the record's only writer); its revision."""
        return int(await (await self.kv()).put(self.key(id_), self.codec.encode(value)))

    async def create(self, id_: str, value: T) -> Stored[T]:
        """Write only if no record is there; ``RecordExists`` otherwise."""
        key = self.key(id_)
        try:
            revision = await (await self.kv()).create(key, self.codec.encode(value))
        except KeyWrongLastSequenceError:
            raise RecordExists(f"{self.bucket}/{key} exists") from None
        return Stored(key, value, int(revision))

    async def replace(self, id_: str, value: T, revision: int | None) -> Stored[T]:
        """Compare-and-set: write only if the record is still at ``revision`` (None: absent);
        ``RecordConflict`` otherwise."""
        if revision is None:
            try:
                return await self.create(id_, value)
            except RecordExists:
                raise RecordConflict(f"{self.bucket}/{self.key(id_)} was created meanwhile") from None
        key = self.key(id_)
        try:
            written = await (await self.kv()).update(key, self.codec.encode(value), last=revision)
        except KeyWrongLastSequenceError:
            raise RecordConflict(f"{self.bucket}/{key} changed meanwhile") from None
        return Stored(key, value, int(written))

    async def update(
        self,
        id_: str,
        change: Callable[[Stored[T] | None], T | Awaitable[T | None] | None],
        *,
        attempts: int = UPDATE_ATTEMPTS,
    ) -> Stored[T] | None:
        """Read the record (None: absent), ``change`` it, write it back by compare-and-set; on a
        conflict read again, at most ``attempts`` times, then ``RecordConflict``. ``change`` returns the
        new value, or None to write nothing (then the record as read is returned). It may be called
        several times, so it must only compute from what it is given."""
        for _ in range(attempts):
            found = await self.get(id_)
            new = change(found)
            if inspect.isawaitable(new):
                new = await new
            if new is None:
                return found
            try:
                return await self.replace(id_, new, found.revision if found is not None else None)
            except RecordConflict:
                continue
        raise RecordConflict(f"{self.bucket}/{self.key(id_)}: {attempts} conflicting writes in a row; retry")

    async def delete(self, id_: str, *, revision: int | None = None) -> None:
        """Delete (with ``revision``: only if the record is still at it, else ``RecordConflict``)."""
        key = self.key(id_)
        try:
            await (await self.kv()).delete(key, last=revision)
        except APIError as exc:
            if exc.err_code in (10071, 10164):  # wrong last sequence
                raise RecordConflict(f"{self.bucket}/{key} changed meanwhile") from None
            raise

    async def purge(self, id_: str) -> None:
        """Delete the record and its history."""
        await (await self.kv()).purge(self.key(id_))

    # watching --------------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def watch(self) -> AsyncIterator[Watch[T]]:
        watcher = await (await self.kv()).watchall()
        try:
            yield Watch(watcher, self.codec)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()
