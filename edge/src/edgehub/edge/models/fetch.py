"""Fetching a model from the hub's object store (``edgehub.sync.models``), resumable and verified.

nats-py's ``ObjectStore.get`` always reads an object from its first chunk, so a cut link would start
a large download over. This fetch reads the chunks itself, one direct get at a time ("the next message
on the object's chunk subject at or after sequence N", ``$JS.API.DIRECT.GET``: what a device's
credentials allow, besides the object's metadata), appends each to ``<sha>.gguf.part`` and records
the bytes it has and the next sequence (``ModelRecord``) after each. After a cut link or a restart it
goes on from the recorded sequence, the part cut back to the recorded length (a crash between the two
writes leaves at most one chunk to fetch again). A model put again on the hub has a new nuid: then it
starts over.

It trusts nothing it reads: the object's digest must name the model's SHA-256, the bytes must add up
to the object's size, and the whole file's SHA-256 (the part's bytes hashed again after a resume) must
be the model's name. Otherwise the model is marked failed with the reason and nothing of it is kept;
only a verified file is renamed to ``<sha>.gguf``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from edgehub.protocol.v1 import models_pb2
from edgehub.sync.models import MODELS, MODELS_STREAM, chunk_subject, digest_of
from edgehub.testing import failpoints

from .shelf import FAILED, FETCHING, VERIFIED, ModelRecord, ModelShelf

log = logging.getLogger("edgehub.edge.models")
RETRY_S = 2.0
"""How long a fetch waits before it tries again after a cut link (doubling up to a minute)."""


class Hasher(Protocol):
    """A running SHA-256 (``hashlib.sha256()``)."""

    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


class FetchFailed(Exception):
    """The model cannot be had as it is (wrong digest, wrong size, wrong hash): not retried."""


class ModelFetcher:
    """Fetches the models the hub sends (``FetchModel``), one at a time, in the background."""

    def __init__(
        self, shelf: ModelShelf, nc: Callable[[], Client | None], *, retry_s: float = RETRY_S
    ) -> None:
        self.shelf = shelf
        self.nc = nc
        self.retry_s = retry_s
        self.fetched = 0
        """Bytes read from the hub by this process (what a resumed fetch did not read again)."""
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._one = asyncio.Semaphore(1)
        self._stop = asyncio.Event()

    def request(self, fetch: models_pb2.FetchModel) -> None:
        """Fetch ``fetch``'s model (a verified one is not fetched again; a failed one is tried anew)."""
        found = self.shelf.get(fetch.sha256)
        if found is not None and found.state == VERIFIED and self.shelf.path(fetch.sha256).exists():
            return
        if found is None or found.state == FAILED:
            found = ModelRecord(fetch.sha256, name=fetch.name, size=fetch.size)
        self.shelf.put(replace(found, state=FETCHING, name=fetch.name or found.name))
        self._start(fetch.sha256)

    def _start(self, sha256: str) -> None:
        if sha256 in self._tasks and not self._tasks[sha256].done():
            return
        self._tasks[sha256] = asyncio.create_task(self._fetch(sha256), name=f"fetch-model-{sha256[:12]}")

    async def run(self, stop: asyncio.Event) -> None:
        """Go on with the fetches a restart cut, then wait for ``stop`` and end those in flight (each
        resumes at the next start)."""
        for record in self.shelf.fetching():
            log.warning("model %s: fetch resumed at %d bytes", record.sha256[:12], record.have)
            self._start(record.sha256)
        await stop.wait()
        self._stop.set()
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def wait(self, sha256: str) -> None:
        """Until the model's fetch in flight has ended (tests, and a UseModel that waits)."""
        task = self._tasks.get(sha256)
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    async def _fetch(self, sha256: str) -> None:
        delay = self.retry_s
        async with self._one:
            while not self._stop.is_set():
                record = self.shelf.get(sha256)
                if record is None or record.state != FETCHING:
                    return
                nc = self.nc()
                try:
                    if nc is None or not nc.is_connected:
                        raise ConnectionError("not connected to the hub")
                    await self._once(nc, record)
                    return
                except FetchFailed as exc:
                    await asyncio.to_thread(self.shelf.fail, self.shelf.get(sha256) or record, str(exc))
                    return
                except (ConnectionError, nats.errors.Error, TimeoutError, OSError) as exc:
                    log.info("model %s: fetch cut (%s); resuming in %.0fs", sha256[:12], exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                delay = min(delay * 2, 60.0)

    async def _once(self, nc: Client, record: ModelRecord) -> None:
        js = nc.jetstream()
        objects = await js.object_store(MODELS)
        try:
            info = await objects.get_info(record.sha256)
        except NotFoundError:
            raise FetchFailed("the hub's store has no such model") from None
        if info.digest != digest_of(record.sha256):
            raise FetchFailed(f"the hub's object has digest {info.digest}, not the model's sha256")
        if record.size and info.size != record.size:
            raise FetchFailed(f"the hub's object is {info.size} bytes, the command said {record.size}")
        assert info.nuid is not None
        assert info.size is not None
        part = self.shelf.part(record.sha256)
        if record.nuid != info.nuid:  # first try, or the model was put again: from the start
            record = replace(record, nuid=info.nuid, size=info.size, have=0, next_seq=0)
        resumed = await asyncio.to_thread(_resume_part, part, record.have)
        if resumed is None:
            record, resumed = replace(record, have=0, next_seq=0), hashlib.sha256()
            part.write_bytes(b"")
        await self._chunks(js, record, part, resumed, info.size)

    async def _chunks(
        self, js: JetStreamContext, record: ModelRecord, part: Path, h: Hasher, size: int
    ) -> None:
        subject, n = chunk_subject(record.nuid), 0
        with part.open("ab") as f:
            while record.have < size:
                try:
                    msg = await js.get_msg(
                        MODELS_STREAM, seq=max(record.next_seq, 1), subject=subject, next=True, direct=True
                    )
                except NotFoundError:  # removed from the hub meanwhile, or a chunk deleted
                    raise FetchFailed(f"the object ends at {record.have} of its {size} bytes") from None
                data = msg.data or b""
                if not data or record.have + len(data) > size:
                    raise FetchFailed(f"the object's chunks add up to more than its {size} bytes")
                f.write(data)
                f.flush()
                h.update(data)
                self.fetched += len(data)
                record = replace(record, have=record.have + len(data), next_seq=int(msg.seq or 0) + 1)
                self.shelf.put(record)
                n += 1
                failpoints.hit("model_fetch.chunk", n)
            os.fsync(f.fileno())
        if h.hexdigest() != record.sha256:
            raise FetchFailed(f"sha256 mismatch: the fetched bytes hash to {h.hexdigest()}")
        os.replace(part, self.shelf.path(record.sha256))
        self.shelf.put(replace(record, state=VERIFIED, next_seq=0))
        log.warning("model %s (%s) fetched and verified", record.name, record.sha256[:12])


def _resume_part(part: Path, have: int) -> Hasher | None:
    """The hash of the part's first ``have`` bytes, the part cut back to them; None when it holds
    fewer (then the fetch starts over)."""
    try:
        with part.open("r+b") as f:
            if os.fstat(f.fileno()).st_size < have:
                return None
            f.truncate(have)
            h = hashlib.sha256()
            while block := f.read(1024 * 1024):
                h.update(block)
            return h
    except FileNotFoundError:
        return None if have else hashlib.sha256()
