"""An in-memory JetStream for unit tests of logic and for the fuzz harnesses (``tests/fuzz``): the KV
buckets ``RecordStore`` reads and writes, and a log of what was published. Never used by a daemon.

It keeps what the logic above it relies on, as nats-py and nats-server do it: keys are validated
with nats-py's own rule (``InvalidKeyError``), every write of a bucket gets the next revision of
that bucket, ``create`` of a present key and ``update`` at a stale revision raise
``KeyWrongLastSequenceError``, a read of a missing or deleted key raises ``KeyNotFoundError``, and an
empty bucket's ``keys`` raises ``NoKeysError``. A publish or a KV write that the server would refuse
or that would cost the client its connection raises ``FakeRefused``: a subject that is not a valid
published subject (empty token, whitespace, a wildcard), a control line over the server's limit, a
payload over ``max_payload``. Any other JetStream call (streams, consumers, watches, object stores)
raises ``FakeUnsupported`` when awaited: a test sees that the code reached the server, and goes no
further. Nothing is asynchronous underneath: every coroutine completes at once,
so a test is deterministic; watches are not provided.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

from nats.js.api import PubAck
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

from .errors import SyncError

MAX_CONTROL_LINE = 4096
"""nats-server's default ``max_control_line``: a longer ``PUB`` line closes the connection."""
MAX_PAYLOAD = 8 * 1024 * 1024
"""What ``NatsServer`` configures (``max_payload``)."""
_KEY = re.compile(r"^[-/_=.a-zA-Z0-9]+$")
"""nats-py's key rule (``nats.js.kv._is_key_valid``), with its leading and trailing ``.`` check below."""
_SUBJECT_TOKEN = re.compile(r"^\S+$")


class FakeRefused(SyncError):
    """What a real server would refuse (or drop the connection for): a bad subject, key or size."""


class FakeUnsupported(Exception):
    """A JetStream call the fake does not model (deliberately outside ``EdgehubError``)."""


@dataclass(frozen=True, slots=True)
class Published:
    """One message published through the fake."""

    subject: str
    data: bytes
    headers: dict[str, str]
    stream: str | None


def check_subject(subject: str) -> None:
    """``FakeRefused`` unless a server would accept a message published on ``subject``."""
    if len(subject) + 64 > MAX_CONTROL_LINE:  # PUB/HPUB, reply and sizes take the rest of the line
        raise FakeRefused(f"subject of {len(subject)} characters: over the control line")
    tokens = subject.split(".")
    if not all(_SUBJECT_TOKEN.match(t) and t not in ("*", ">") for t in tokens):
        raise FakeRefused(f"not a subject to publish on: {subject[:80]!r}")


def _valid_key(key: str) -> bool:
    return bool(key) and not key.startswith(".") and not key.endswith(".") and bool(_KEY.match(key))


@dataclass
class FakeBucket:
    """One KV bucket: key -> (value, revision)."""

    name: str
    entries: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    revision: int = 0

    def _key(self, key: str) -> str:
        if not _valid_key(key):
            raise FakeRefused(f"invalid key {key[:80]!r}")
        check_subject(f"$KV.{self.name}.{key}")
        return key

    def _write(self, key: str, value: bytes) -> int:
        if len(value) > MAX_PAYLOAD:
            raise FakeRefused(f"a value of {len(value)} bytes: over max_payload")
        self.revision += 1
        self.entries[key] = (bytes(value), self.revision)
        return self.revision

    async def get(self, key: str) -> KeyValue.Entry:
        found = self.entries.get(self._key(key))
        if found is None:
            raise KeyNotFoundError
        value, revision = found
        return KeyValue.Entry(self.name, key, value, revision, None, None, None)

    async def keys(self) -> list[str]:
        if not self.entries:
            raise NoKeysError
        return list(self.entries)

    async def put(self, key: str, value: bytes) -> int:
        return self._write(self._key(key), value)

    async def create(self, key: str, value: bytes) -> int:
        if self._key(key) in self.entries:
            raise KeyWrongLastSequenceError(description="wrong last sequence")
        return self._write(key, value)

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        found = self.entries.get(self._key(key))
        if (found[1] if found is not None else 0) != (last or 0):
            raise KeyWrongLastSequenceError(description="wrong last sequence")
        return self._write(key, value)

    async def delete(self, key: str, last: int | None = None) -> bool:
        found = self.entries.get(self._key(key))
        if last and (found is None or found[1] != last):
            raise KeyWrongLastSequenceError(description="wrong last sequence")
        self.revision += 1
        self.entries.pop(key, None)
        return True

    async def purge(self, key: str) -> bool:
        return await self.delete(key)


class FakeJetStream:
    """The part of ``nats.js.JetStreamContext`` that the record store and the event paths use."""

    def __init__(self) -> None:
        self.buckets: dict[str, FakeBucket] = {}
        self.published: list[Published] = []

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        async def unsupported(*args: Any, **kwargs: Any) -> Any:
            raise FakeUnsupported(f"JetStream.{name} is not modelled by the fake")

        return unsupported

    async def key_value(self, bucket: str) -> FakeBucket:
        return self.buckets.setdefault(bucket, FakeBucket(bucket))

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        stream: str | None = None,
        headers: dict[str, str] | None = None,
        **_: Any,
    ) -> PubAck:
        check_subject(subject)
        if len(payload) > MAX_PAYLOAD:
            raise FakeRefused(f"a payload of {len(payload)} bytes: over max_payload")
        self.published.append(Published(subject, bytes(payload), dict(headers or {}), stream))
        return PubAck(stream=stream or "", seq=len(self.published))

    def state(self) -> dict[str, dict[str, tuple[bytes, int]]]:
        """Every bucket's entries (a copy): what a test compares before and after."""
        return {name: dict(bucket.entries) for name, bucket in self.buckets.items() if bucket.entries}

    def snapshot(self) -> FakeJetStream:
        """A deep copy (buckets and the publish log)."""
        return copy.deepcopy(self)

    def restore(self, snapshot: FakeJetStream) -> None:
        """Back to ``snapshot`` (taken with ``snapshot``)."""
        self.buckets = copy.deepcopy(snapshot.buckets)
        self.published = list(snapshot.published)


class FakeMsg:
    """A message as a consumer hands it over (``nats.aio.msg.Msg``'s fields and acknowledgements), with
    what was done to it: ``outcome`` is ``ack``, ``nak`` or '' (none yet); a second outcome is an error."""

    def __init__(self, subject: str, data: bytes, headers: dict[str, str] | None = None) -> None:
        self.subject = subject
        self.data = data
        self.headers = headers
        self.reply = "$JS.ACK.fake"
        self.outcome = ""

    @property
    def is_acked(self) -> bool:
        return bool(self.outcome)

    def _settle(self, outcome: str) -> None:
        if self.outcome:
            raise FakeRefused(f"{outcome} after {self.outcome}: the message was settled already")
        self.outcome = outcome

    async def ack(self) -> None:
        self._settle("ack")

    async def nak(self, delay: float | None = None) -> None:
        self._settle("nak")

    async def in_progress(self) -> None:
        if self.outcome:
            raise FakeRefused(f"in_progress after {self.outcome}")
