"""Agent migration between devices, orchestrated by the hub, with single-owner fencing.

One migration per agent at a time, recorded in JetStream KV (``edgehub-migrations``, key: the agent)
and advanced only by compare-and-set, so any hub process can serve any step and a hub restart loses
nothing. The phases::

    exporting   MigrateOut sent to the source. The source stops the agent at its next step
                boundary, marks it MIGRATED (it never runs it again unless it comes back with a newer
                epoch) and hands the AgentBundle over (PutHandover, device API). The hub stores it
                in the ``edgehub-handovers`` object store, moves the agent's record to the target
                with epoch + 1 (CAS), then the migration to
    importing   MigrateIn sent to the target. The target fetches the bundle (GetHandover), checks its
                digest, imports it with the new epoch in one transaction, resumes the agent at the
                same step and reports (CompleteHandover):
    done        the handover object is deleted.

Failures: a source that cannot hand the agent over says why (``refused``), and the migration is
``failed`` with nothing moved: the source runs the agent again. A target that cannot import it says
why, and the hub gives the agent back: epoch + 1 again, owner the source, MigrateIn to the source
(``rolled_back`` when it has resumed there). A lost command or a hub that died between two steps is
made good by ``redrive`` (every ``redrive_s`` and at start): each step is idempotent (commands have
fixed ids; the edges check epochs), so repeating one is harmless.

Why this gives exactly one owner: the epoch moves only after the source has stood down (marked the
agent MIGRATED, durably, before handing it over), and the target runs the agent only with the epoch
the hub gave it. Events of an agent are accepted only from the device that owned it at the event's
epoch and for the steps it owned (``fence``): a late event of a stale copy is dead-lettered, never
applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from edgehub.protocol.errors import ErrorCode
from edgehub.protocol.ids import kv_key
from edgehub.protocol.v1 import agent_pb2, commands_pb2, hub_pb2
from edgehub.sync.commands import new_command, send_command
from edgehub.sync.streams import HANDOVERS, MAX_HANDOVER_BYTES, MIGRATIONS
from edgehub.testing import failpoints

from ..errors import MigrationError
from .registry import AgentRegistry, is_online

log = logging.getLogger("edgehub.hub.fleet.migration")

MIGRATABLE = frozenset({"running", "pending", "awaiting_approval"})
IN_FLIGHT = frozenset({"exporting", "importing"})
BUNDLE_SCHEMA_VERSION = 1


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def to_proto(m: dict[str, Any]) -> hub_pb2.Migration:
    return hub_pb2.Migration(
        migration_id=m["migration_id"],
        agent_id=m["agent_id"],
        source_device=m["source"],
        target_device=m["target"],
        from_epoch=int(m["from_epoch"]),
        to_epoch=int(m["to_epoch"]),
        phase=m["phase"],
        step=int(m.get("step", 0)),
        bytes=int(m.get("bytes", 0)),
        digest=m.get("digest", ""),
        error=m.get("error", ""),
        requested_by=m.get("requested_by", ""),
        started_at=float(m.get("started_at", 0)),
        updated_at=float(m.get("updated_at", 0)),
        exported_at=float(m.get("exported_at", 0)),
        done_at=float(m.get("done_at", 0)),
        stopped_at=float(m.get("stopped_at", 0)),
        resumed_at=float(m.get("resumed_at", 0)),
    )


@dataclass
class _Entry:
    record: dict[str, Any]
    revision: int


class MigrationService:
    """The hub's side of migrations (see the module docstring); the API calls into it."""

    def __init__(
        self,
        js: JetStreamContext,
        agents: AgentRegistry,
        twins: Callable[[], Awaitable[list[dict[str, Any]]]] | None = None,
        *,
        issued_by: str = "hub",
        redrive_s: float = 10.0,
    ) -> None:
        self.js = js
        self.agents = agents
        self.twins = twins
        """The device twins (the hub's live view): is the target online, not draining."""
        self.issued_by = issued_by
        self.redrive_s = redrive_s
        self._kv: KeyValue | None = None
        self._objects: ObjectStore | None = None

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self.js.key_value(MIGRATIONS.name)
        return self._kv

    async def _store(self) -> ObjectStore:
        if self._objects is None:
            self._objects = await self.js.object_store(HANDOVERS)
        return self._objects

    async def _get(self, agent_id: str) -> _Entry | None:
        try:
            entry = await (await self._bucket()).get(kv_key(agent_id))
        except KeyNotFoundError:
            return None
        return _Entry(json.loads(entry.value or b"{}"), int(entry.revision or 0))

    async def _put(self, m: dict[str, Any], revision: int | None) -> dict[str, Any]:
        """CAS; MigrationError ABORTED when another hub process moved the migration meanwhile."""
        m["updated_at"] = time.time()
        kv = await self._bucket()
        data = json.dumps(m).encode()
        try:
            if revision is None:
                await kv.create(kv_key(m["agent_id"]), data)
            else:
                await kv.update(kv_key(m["agent_id"]), data, last=revision)
        except KeyWrongLastSequenceError:
            raise MigrationError(
                ErrorCode.ABORTED, f"migration of {m['agent_id']} changed meanwhile; retry"
            ) from None
        return m

    async def get(self, agent_id: str) -> dict[str, Any] | None:
        found = await self._get(agent_id)
        return None if found is None else found.record

    # operator ------------------------------------------------------------------------------------
    async def _target_ready(self, device_id: str) -> None:
        twins = await self.twins() if self.twins is not None else []
        twin = next((t for t in twins if t.get("device_id") == device_id), None)
        if twin is None:
            raise MigrationError(ErrorCode.FAILED_PRECONDITION, f"device {device_id} is unknown to the hub")
        if not is_online(twin, time.time()):
            raise MigrationError(ErrorCode.FAILED_PRECONDITION, f"device {device_id} is offline")
        if twin.get("draining"):
            raise MigrationError(ErrorCode.FAILED_PRECONDITION, f"device {device_id} is draining")

    async def start(self, agent_id: str, to_device: str, by: str) -> dict[str, Any]:
        if not agent_id or not to_device:
            raise MigrationError(ErrorCode.INVALID_ARGUMENT, "agent_id and to_device are required")
        record = await self.agents.get(agent_id)
        if record is None:
            raise MigrationError(ErrorCode.NOT_FOUND, f"no agent {agent_id!r} has reported to the hub")
        if record.get("status") not in MIGRATABLE:
            raise MigrationError(
                ErrorCode.FAILED_PRECONDITION,
                f"agent {agent_id} is {record.get('status')}: only an active one moves",
            )
        source = str(record["device_id"])
        if source == to_device:
            raise MigrationError(
                ErrorCode.FAILED_PRECONDITION, f"agent {agent_id} already runs on {to_device}"
            )
        await self._target_ready(to_device)
        existing = await self._get(agent_id)
        if existing is not None and existing.record["phase"] in IN_FLIGHT:
            m = existing.record
            raise MigrationError(
                ErrorCode.FAILED_PRECONDITION,
                f"migration {m['migration_id']} of {agent_id} "
                f"({m['source']} -> {m['target']}) is {m['phase']}",
            )
        epoch = int(record.get("epoch", 0))
        m = {
            "migration_id": f"mig-{uuid.uuid4().hex[:12]}",
            "agent_id": agent_id,
            "source": source,
            "target": to_device,
            "from_epoch": epoch,
            "to_epoch": epoch + 1,
            "phase": "exporting",
            "requested_by": by,
            "started_at": time.time(),
        }
        m = await self._put(m, existing.revision if existing else None)
        log.info(
            "migration %s: %s from %s to %s (epoch %d)", m["migration_id"], agent_id, source, to_device, epoch
        )
        await self._send_out(m)
        return m

    # commands ------------------------------------------------------------------------------------
    async def _send_out(self, m: dict[str, Any]) -> None:
        cmd = new_command(m["source"], self.issued_by)
        cmd.command_id = f"{m['migration_id']}-out"  # fixed: a resend is the same command
        cmd.epoch = int(m["from_epoch"])
        cmd.migrate_out.CopyFrom(
            commands_pb2.MigrateOut(
                agent_id=m["agent_id"], migration_id=m["migration_id"], target_device=m["target"]
            )
        )
        await send_command(self.js, cmd)

    async def _send_in(self, m: dict[str, Any]) -> None:
        cmd = new_command(m["target"], self.issued_by)
        cmd.command_id = f"{m['migration_id']}-in-{m['to_epoch']}"
        cmd.epoch = int(m["to_epoch"])
        cmd.migrate_in.CopyFrom(
            commands_pb2.MigrateIn(
                agent_id=m["agent_id"],
                migration_id=m["migration_id"],
                epoch=int(m["to_epoch"]),
                source_device=m["source"],
                digest=m["digest"],
            )
        )
        await send_command(self.js, cmd)

    # devices -------------------------------------------------------------------------------------
    async def _mine(self, device: str, agent_id: str, migration_id: str, role: str) -> _Entry:
        found = await self._get(agent_id)
        if found is None or found.record["migration_id"] != migration_id:
            raise MigrationError(ErrorCode.NOT_FOUND, f"no migration {migration_id!r} of agent {agent_id!r}")
        if found.record[role] != device:
            raise MigrationError(
                ErrorCode.PERMISSION_DENIED, f"migration {migration_id}: device {device} is not its {role}"
            )
        return found

    async def put_handover(self, device: str, req: hub_pb2.PutHandoverRequest) -> dict[str, Any]:
        """The source hands the agent over (or refuses); idempotent."""
        found = await self._mine(device, req.agent_id, req.migration_id, "source")
        m = found.record
        if m["phase"] != "exporting" or m.get("rolled_back_from"):
            return m  # done before (a repeated hand-over), or failed: the answer tells the source
        if req.refused:
            return await self._fail(found, f"the source refused: {req.refused[:500]}")
        problem = self._check_bundle(req.bundle, req.digest, req.agent_id)
        if problem:
            return await self._fail(found, f"the source's state is unusable: {problem}")
        bundle = agent_pb2.AgentBundle.FromString(req.bundle)
        await (await self._store()).put(m["migration_id"], req.bundle)
        m.update(
            step=bundle.state.step,
            bytes=len(req.bundle),
            digest=req.digest,
            exported_at=time.time(),
            stopped_at=bundle.exported_at.ToMilliseconds() / 1000,
        )
        return await self._hand_to(found, m["target"])

    @staticmethod
    def _check_bundle(data: bytes, digest: str, agent_id: str) -> str:
        if not data or len(data) > MAX_HANDOVER_BYTES:
            return f"{len(data)} bytes (at most {MAX_HANDOVER_BYTES})"
        if digest_of(data) != digest:
            return "digest mismatch"
        try:
            bundle = agent_pb2.AgentBundle.FromString(data)
        except DecodeError as exc:
            return f"not an AgentBundle ({exc})"
        if bundle.schema_version != BUNDLE_SCHEMA_VERSION:
            return f"bundle version {bundle.schema_version} is not supported"
        if bundle.state.agent_id != agent_id:
            return f"the bundle is agent {bundle.state.agent_id!r}, not {agent_id!r}"
        return ""

    async def _hand_to(self, found: _Entry, target: str) -> dict[str, Any]:
        """Move the agent's record to ``target`` with the migration's ``to_epoch`` (CAS, idempotent),
        then the migration to importing, then MigrateIn to the target."""
        m = found.record
        moved = await self.agents.transfer(
            m["agent_id"], int(m["from_epoch"]), int(m["to_epoch"]), target, int(m["step"]), m["migration_id"]
        )
        if not moved:
            return await self._fail(found, "the agent's epoch moved on meanwhile (another owner)")
        failpoints.hit("migration.transferred", int(m["step"]))
        m.update(phase="importing", target=target)
        m = await self._put(m, found.revision)
        failpoints.hit("migration.importing", int(m["step"]))
        await self._send_in(m)
        return m

    async def _fail(self, found: _Entry, error: str) -> dict[str, Any]:
        m = found.record
        m.update(phase="failed", error=error)
        log.warning("migration %s of %s failed: %s", m["migration_id"], m["agent_id"], error)
        return await self._put(m, found.revision)

    async def get_handover(self, device: str, req: hub_pb2.GetHandoverRequest) -> hub_pb2.Handover:
        found = await self._mine(device, req.agent_id, req.migration_id, "target")
        m = found.record
        if m["phase"] != "importing":
            raise MigrationError(
                ErrorCode.FAILED_PRECONDITION, f"migration {m['migration_id']} is {m['phase']}"
            )
        try:
            obj = await (await self._store()).get(m["migration_id"])
        except NotFoundError:
            raise MigrationError(
                ErrorCode.NOT_FOUND, f"migration {m['migration_id']}: its state is gone"
            ) from None
        data = bytes(obj.data or b"")
        return hub_pb2.Handover(bundle=data, digest=digest_of(data), epoch=int(m["to_epoch"]))

    async def complete(self, device: str, req: hub_pb2.CompleteHandoverRequest) -> dict[str, Any]:
        """The target resumed the agent (done), or could not import it (given back to the source)."""
        found = await self._mine(device, req.agent_id, req.migration_id, "target")
        m = found.record
        if m["phase"] != "importing":
            return m
        if req.refused:
            if m.get("rolled_back_from"):  # the source cannot take its own agent back: stuck, say so
                return await self._fail(found, f"the source could not take the agent back: {req.refused}")
            log.warning(
                "migration %s: %s refused the agent (%s); giving it back",
                m["migration_id"],
                device,
                req.refused,
            )
            m.update(
                rolled_back_from=device,
                error=f"the target refused: {req.refused[:500]}",
                from_epoch=int(m["to_epoch"]),
                to_epoch=int(m["to_epoch"]) + 1,
            )
            return await self._hand_to(found, m["source"])
        m.update(
            phase="rolled_back" if m.get("rolled_back_from") else "done",
            done_at=time.time(),
            resumed_at=req.resumed_at,
        )
        m = await self._put(m, found.revision)
        with contextlib.suppress(Exception):  # it expires anyway (HANDOVER_TTL_S)
            await (await self._store()).delete(m["migration_id"])
        log.info(
            "migration %s of %s: %s on %s at step %s",
            m["migration_id"],
            m["agent_id"],
            m["phase"],
            device,
            m.get("step"),
        )
        return m

    # recovery ------------------------------------------------------------------------------------
    async def redrive(self, older_than_s: float = 0.0) -> int:
        """Re-send what an in-flight migration waits for (a lost command, a hub that died between two
        steps); returns how many were re-driven."""
        kv = await self._bucket()
        try:
            keys = await kv.keys()
        except Exception:  # no migrations yet (NoKeysError)
            return 0
        now, count = time.time(), 0
        for key in keys:
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:
                continue
            m = json.loads(entry.value or b"{}")
            if m.get("phase") not in IN_FLIGHT or now - float(m.get("updated_at", 0)) < older_than_s:
                continue
            count += 1
            if m["phase"] == "importing":
                log.info("migration %s: MigrateIn to %s sent again", m["migration_id"], m["target"])
                await self._send_in(m)
                continue
            record = await self.agents.get(m["agent_id"])
            if record is not None and int(record.get("epoch", 0)) == int(m["to_epoch"]):
                # the record moved but the hub died before the migration did: roll forward from the
                # stored state (its digest is the object's)
                with contextlib.suppress(NotFoundError):
                    obj = await (await self._store()).get(m["migration_id"])
                    data = bytes(obj.data or b"")
                    step = int(record["epochs"][-1]["from_step"])
                    m.update(digest=digest_of(data), bytes=len(data), step=step)
                    log.info(
                        "migration %s: the epoch had moved; handing over to %s",
                        m["migration_id"],
                        m["target"],
                    )
                    await self._hand_to(_Entry(m, int(entry.revision or 0)), m["target"])
                    continue
            log.info("migration %s: MigrateOut to %s sent again", m["migration_id"], m["source"])
            await self._send_out(m)
        return count

    async def run(self, stop: asyncio.Event) -> None:
        """Re-drive stalled migrations every ``redrive_s`` (every hub process: each step is idempotent)."""
        last_error = ""
        while not stop.is_set():
            try:
                n = await self.redrive(older_than_s=self.redrive_s)
                if n:
                    log.info("re-drove %d migration(s)", n)
                last_error = ""
            except Exception as exc:  # NATS restarting: the next round retries
                error = f"{type(exc).__name__}: {exc}"
                level = logging.DEBUG if error == last_error else logging.WARNING  # once, not every round
                log.log(level, "migration redrive failed (%s); again in %g s", error, self.redrive_s)
                last_error = error
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.redrive_s)
