"""Models the hub stores and sends to devices (issue 21 part 2; the shared names are
``edgehub.sync.models``).

``add`` takes an upload as a stream of chunks, the first naming the model and the SHA-256 the client
computed. The hub spools the bytes to a temporary file while hashing them itself, and keeps the file
only when it starts with the GGUF magic and its hash is the declared one: then it is put into the
object store ``edgehub-models`` under its SHA-256 (chunked by nats-py, which records the digest too)
and its ``ModelInfo`` written to ``edgehub-model-infos``. A file stored already is not put again.

``push`` sends ``FetchModel`` and ``use`` sends ``UseModel`` to the devices a selector picks (the one
selector of ``edgehub policy push``: ``policies.target_devices``). Whether a device fetched, verified
and runs a model is its twin's (``models``, ``model_sha256``); the hub does not track it twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO

from nats.js import JetStreamContext
from nats.js.api import ObjectMeta, ObjectMetaOptions
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore

from edgehub.protocol.errors import ErrorCode
from edgehub.protocol.ids import InvalidId, check_id, check_sha256
from edgehub.protocol.v1 import commands_pb2, hub_pb2, models_pb2
from edgehub.sync.commands import new_command
from edgehub.sync.models import CHUNK_SIZE, GGUF_MAGIC, MODEL_INFOS_CODEC, digest_of, is_gguf
from edgehub.sync.records import RecordStore
from edgehub.sync.streams import MODEL_INFOS, MODELS

from ..errors import Refused
from .control import Commands
from .policies import Views, target_devices
from .scopes import Scope, ScopeGuard

log = logging.getLogger("edgehub.hub.fleet.models")
H, M = hub_pb2, models_pb2


def _invalid(message: str) -> Refused:
    return Refused(ErrorCode.INVALID_ARGUMENT, message)


class Upload:
    """One upload being received: spooled to a temporary file and hashed as it comes."""

    def __init__(self, first: H.AddModelChunk, folder: str | None = None) -> None:
        self.declared = check_sha256(first.sha256.lower(), "sha256") if first.sha256 else ""
        if not self.declared:
            raise _invalid("the upload must declare the file's sha256 (the client computes it)")
        self.name = check_id(first.name, "name") if first.name else ""
        self.size_declared = first.size
        fd, path = tempfile.mkstemp(prefix="edgehub-model-", suffix=".part", dir=folder)
        self.path = Path(path)
        self.file: BinaryIO = os.fdopen(fd, "wb")
        self.hash = hashlib.sha256()
        self.size = 0
        self.head = b""

    def write(self, data: bytes) -> None:
        if len(self.head) < len(GGUF_MAGIC):
            self.head += data[: len(GGUF_MAGIC) - len(self.head)]
            if len(self.head) == len(GGUF_MAGIC) and not is_gguf(self.head):
                raise _invalid(f"not a GGUF file (it starts with {self.head!r}, not {GGUF_MAGIC!r})")
        self.file.write(data)
        self.hash.update(data)
        self.size += len(data)

    def finish(self) -> str:
        """The file's SHA-256, once it is whole and checked; INVALID_ARGUMENT otherwise."""
        self.file.close()
        if not is_gguf(self.head):
            raise _invalid(f"not a GGUF file ({self.size} bytes, no GGUF magic)")
        if self.size_declared and self.size != self.size_declared:
            raise _invalid(f"the upload ended at {self.size} bytes, {self.size_declared} were declared")
        sha = self.hash.hexdigest()
        if sha != self.declared:
            raise _invalid(f"the hub computed sha256 {sha}, the client declared {self.declared}: refused")
        return sha

    def discard(self) -> None:
        if not self.file.closed:
            self.file.close()
        self.path.unlink(missing_ok=True)


class FleetModels:
    """The hub's model store and the commands that send models to devices (see the module docstring)."""

    def __init__(
        self, js: JetStreamContext, commands: Commands, views: Views, scopes: ScopeGuard, spool: str | None
    ) -> None:
        self.js = js
        self.infos = RecordStore(js, MODEL_INFOS.name, MODEL_INFOS_CODEC, keyed=False)
        self.commands = commands
        self.views = views
        self.scopes = scopes
        self.spool = spool
        """Where uploads are spooled before they are verified (None: the system's temporary folder)."""
        self._objects: ObjectStore | None = None

    async def objects(self) -> ObjectStore:
        if self._objects is None:
            self._objects = await self.js.object_store(MODELS)
        return self._objects

    async def add(self, chunks: AsyncIterator[H.AddModelChunk], by: str) -> M.ModelInfo:
        """Receive, check and keep an uploaded model (see the module docstring)."""
        upload: Upload | None = None
        try:
            async for chunk in chunks:
                if upload is None:
                    upload = await asyncio.to_thread(Upload, chunk, self.spool)
                await asyncio.to_thread(upload.write, chunk.data)
            if upload is None:
                raise _invalid("an empty upload")
            sha = await asyncio.to_thread(upload.finish)
            info = M.ModelInfo(
                sha256=sha, name=upload.name or sha[:12], size=upload.size, chunk_size=CHUNK_SIZE,
                added_by=by, added_at=time.time(),
            )  # fmt: skip
            await self._keep(upload.path, info)
        finally:
            if upload is not None:
                await asyncio.to_thread(upload.discard)
        log.warning("model %s (%s, %d bytes) added by %s", info.name, sha[:12], info.size, by)
        return info

    async def _keep(self, path: Path, info: M.ModelInfo) -> None:
        objects = await self.objects()
        if not await self._stored(objects, info):
            meta = ObjectMeta(
                name=info.sha256,
                description=info.name,
                options=ObjectMetaOptions(max_chunk_size=info.chunk_size),
            )
            with path.open("rb") as f:
                await objects.put(info.sha256, f, meta=meta)
        await self.infos.put(info.sha256, info)

    async def _stored(self, objects: ObjectStore, info: M.ModelInfo) -> bool:
        """The object is there whole (its digest, size and chunk size): not put again."""
        try:
            found = await objects.get_info(info.sha256)
        except NotFoundError:
            return False
        chunk = found.options.max_chunk_size if found.options is not None else 0
        same = (found.digest, found.size, chunk) == (digest_of(info.sha256), info.size, info.chunk_size)
        return same

    async def list(self) -> list[M.ModelInfo]:
        return sorted((s.value for s in await self.infos.list()), key=lambda m: (m.name, m.added_at))

    async def resolve(self, model: str) -> M.ModelInfo:
        """The model named by its SHA-256 or its name; NOT_FOUND, or INVALID_ARGUMENT when a name is
        shared by several models (then the SHA-256 must be given)."""
        if not model:
            raise _invalid("name the model (its sha256 or its name)")
        try:
            sha = check_sha256(model.lower(), "model")
        except InvalidId:
            sha = ""
        if sha and (found := await self.infos.get(sha)) is not None:
            return found.value
        named = [m for m in await self.list() if m.name == model]
        if len(named) > 1:
            shas = ", ".join(m.sha256[:12] for m in named)
            raise _invalid(f"{len(named)} models are named {model!r} ({shas}): give the sha256")
        if not named:
            raise Refused(ErrorCode.NOT_FOUND, f"no model {model!r} in the hub's store")
        return named[0]

    async def push(self, req: H.PushModelRequest, by: str, scope: Scope) -> H.ModelSent:
        """Send ``FetchModel`` to each device the target picks."""
        info = await self.resolve(req.model)
        body = M.FetchModel(sha256=info.sha256, name=info.name, size=info.size)
        return await self._send(
            info, req.target, by, scope, "PushModel", lambda c: c.fetch_model.CopyFrom(body)
        )

    async def use(self, req: H.UseModelRequest, by: str, scope: Scope) -> H.ModelSent:
        """Send ``UseModel`` to each device the target picks (each refuses it unless it holds the
        model verified)."""
        info = await self.resolve(req.model)
        body = M.UseModel(sha256=info.sha256, name=info.name, reason=req.reason)
        return await self._send(info, req.target, by, scope, "UseModel", lambda c: c.use_model.CopyFrom(body))

    async def _send(
        self,
        info: M.ModelInfo,
        target: H.PolicyTarget,
        by: str,
        scope: Scope,
        method: str,
        fill: Callable[[commands_pb2.Command], None],
    ) -> H.ModelSent:
        devices = await target_devices(target, scope, await self.views(), self.scopes, method)
        for device_id in devices:
            cmd: commands_pb2.Command = new_command(device_id, by)
            fill(cmd)
            await self.commands.send(cmd)
        log.warning("%s %s (%s) by %s to %s", method, info.name, info.sha256[:12], by, devices)
        return H.ModelSent(model=info, devices=devices)

    async def remove(self, model: str, by: str) -> M.ModelInfo:
        """Delete a model from the store (its object, then its record)."""
        info = await self.resolve(model)
        objects = await self.objects()
        with contextlib.suppress(NotFoundError):
            await objects.delete(info.sha256)
        await self.infos.delete(info.sha256)
        log.warning("model %s (%s) removed by %s", info.name, info.sha256[:12], by)
        return info
