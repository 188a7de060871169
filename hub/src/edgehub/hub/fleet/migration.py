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
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from google.protobuf.message import DecodeError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore

from edgehub.protocol.errors import ErrorCode
from edgehub.protocol.v1 import agent_pb2, commands_pb2, hub_pb2
from edgehub.sync.commands import new_command, send_command
from edgehub.sync.records import JsonObject, ProtoCodec, RecordConflict, RecordStore, Stored, json_legacy
from edgehub.sync.streams import HANDOVERS, MAX_HANDOVER_BYTES, MIGRATIONS
from edgehub.testing import failpoints

from ..errors import MigrationError
from .agents import AgentRegistry, status_name

log = logging.getLogger("edgehub.hub.fleet.migration")

S = agent_pb2
H = hub_pb2
Migration = hub_pb2.Migration
MIGRATABLE = frozenset({S.AGENT_STATUS_RUNNING, S.AGENT_STATUS_PENDING, S.AGENT_STATUS_AWAITING_APPROVAL})
IN_FLIGHT = frozenset({H.MIGRATION_PHASE_EXPORTING, H.MIGRATION_PHASE_IMPORTING})
BUNDLE_SCHEMA_VERSION = 1
RECORD_VERSION = 1
Devices = Callable[[], Awaitable[list[hub_pb2.Device]]]
"""The devices as the hub sees them (``DeviceRegistry.all``)."""


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def phase_name(phase: int) -> str:
    """``MIGRATION_PHASE_ROLLED_BACK`` -> ``rolled_back``."""
    return H.MigrationPhase.Name(phase).removeprefix("MIGRATION_PHASE_").lower()  # type: ignore[arg-type]


_TIMES = ("started_at", "updated_at", "exported_at", "done_at", "stopped_at", "resumed_at")


def _from_json(m: JsonObject) -> hub_pb2.Migration:
    """A migration as the release before stored it: JSON, the devices as ``source`` and ``target``,
    the phase by its short name."""
    return Migration(
        migration_id=str(m["migration_id"]),
        agent_id=str(m["agent_id"]),
        source_device=str(m["source"]),
        target_device=str(m["target"]),
        from_epoch=int(m["from_epoch"]),
        to_epoch=int(m["to_epoch"]),
        phase=H.MigrationPhase.Value(f"MIGRATION_PHASE_{str(m['phase']).upper()}"),
        step=int(m.get("step", 0)),
        bytes=int(m.get("bytes", 0)),
        digest=str(m.get("digest", "")),
        error=str(m.get("error", "")),
        requested_by=str(m.get("requested_by", "")),
        rolled_back_from=str(m.get("rolled_back_from", "")),
        **{t: float(m.get(t) or 0) for t in _TIMES},
        schema_version=RECORD_VERSION,
    )


CODEC = ProtoCodec(Migration, RECORD_VERSION, legacy=json_legacy(_from_json))


def bundle_problem(data: bytes, digest: str, agent_id: str) -> str:
    """What is wrong with the state a source handed over ('' when nothing is)."""
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


def _copy(m: hub_pb2.Migration) -> hub_pb2.Migration:
    new = Migration()
    new.CopyFrom(m)
    return new


def _refuse(code: ErrorCode, message: str) -> MigrationError:
    return MigrationError(code, message)


class MigrationService:
    """The hub's side of migrations (see the module docstring); the API calls into it."""

    def __init__(
        self,
        js: JetStreamContext,
        agents: AgentRegistry,
        devices: Devices | None = None,
        *,
        issued_by: str = "hub",
        redrive_s: float = 10.0,
    ) -> None:
        self.js = js
        self.agents = agents
        self.devices = devices
        """The devices (the hub's live view): is the target online, not draining, not paused."""
        self.issued_by = issued_by
        self.redrive_s = redrive_s
        self.store = RecordStore(js, MIGRATIONS.name, CODEC)
        self._objects: ObjectStore | None = None

    async def _store(self) -> ObjectStore:
        if self._objects is None:
            self._objects = await self.js.object_store(HANDOVERS)
        return self._objects

    async def _put(self, m: hub_pb2.Migration, revision: int | None) -> hub_pb2.Migration:
        """CAS; MigrationError ABORTED when another hub process moved the migration meanwhile."""
        m.updated_at = time.time()
        try:
            await self.store.replace(m.agent_id, m, revision)
        except RecordConflict:
            raise _refuse(ErrorCode.ABORTED, f"migration of {m.agent_id} changed meanwhile; retry") from None
        return m

    async def get(self, agent_id: str) -> hub_pb2.Migration | None:
        found = await self.store.get(agent_id)
        return None if found is None else found.value

    async def latest(self, agent_id: str) -> hub_pb2.Migration:
        """The agent's latest migration; NOT_FOUND when it was never migrated."""
        found = await self.get(agent_id)
        if found is None:
            raise _refuse(ErrorCode.NOT_FOUND, f"agent {agent_id!r} was never migrated")
        return found

    # operator ------------------------------------------------------------------------------------
    async def _target_ready(self, device_id: str) -> None:
        devices = await self.devices() if self.devices is not None else []
        found = next((d for d in devices if d.device_id == device_id), None)
        if found is None:
            raise _refuse(ErrorCode.FAILED_PRECONDITION, f"device {device_id} is unknown to the hub")
        if not found.online:
            raise _refuse(ErrorCode.FAILED_PRECONDITION, f"device {device_id} is offline")
        if found.twin.draining:
            raise _refuse(ErrorCode.FAILED_PRECONDITION, f"device {device_id} is draining")
        if found.twin.paused_reason:
            raise _refuse(
                ErrorCode.FAILED_PRECONDITION,
                f"device {device_id} has paused its agents ({found.twin.paused_reason[:80]})",
            )

    async def _movable(self, agent_id: str, to_device: str) -> hub_pb2.AgentRecord:
        if not agent_id or not to_device:
            raise _refuse(ErrorCode.INVALID_ARGUMENT, "agent_id and to_device are required")
        record = await self.agents.get(agent_id)
        if record is None:
            raise _refuse(ErrorCode.NOT_FOUND, f"no agent {agent_id!r} has reported to the hub")
        if record.status not in MIGRATABLE:
            raise _refuse(
                ErrorCode.FAILED_PRECONDITION,
                f"agent {agent_id} is {status_name(record.status)}: only an active one moves",
            )
        if record.device_id == to_device:
            raise _refuse(ErrorCode.FAILED_PRECONDITION, f"agent {agent_id} already runs on {to_device}")
        await self._target_ready(to_device)
        return record

    async def start(self, agent_id: str, to_device: str, by: str) -> hub_pb2.Migration:
        record = await self._movable(agent_id, to_device)
        existing = await self.store.get(agent_id)
        if existing is not None and existing.value.phase in IN_FLIGHT:
            old = existing.value
            raise _refuse(
                ErrorCode.FAILED_PRECONDITION,
                f"migration {old.migration_id} of {agent_id} "
                f"({old.source_device} -> {old.target_device}) is {phase_name(old.phase)}",
            )
        m = Migration(
            migration_id=f"mig-{uuid.uuid4().hex[:12]}",
            agent_id=agent_id,
            source_device=record.device_id,
            target_device=to_device,
            from_epoch=record.epoch,
            to_epoch=record.epoch + 1,
            phase=H.MIGRATION_PHASE_EXPORTING,
            requested_by=by,
            started_at=time.time(),
        )
        m = await self._put(m, existing.revision if existing else None)
        log.info(
            "migration %s: %s from %s to %s (epoch %d)",
            m.migration_id,
            agent_id,
            m.source_device,
            to_device,
            record.epoch,
        )
        await self._send_out(m)
        return m

    # commands ------------------------------------------------------------------------------------
    async def _send_out(self, m: hub_pb2.Migration) -> None:
        cmd = new_command(m.source_device, self.issued_by)
        cmd.command_id = f"{m.migration_id}-out"  # fixed: a resend is the same command
        cmd.epoch = m.from_epoch
        cmd.migrate_out.CopyFrom(
            commands_pb2.MigrateOut(
                agent_id=m.agent_id, migration_id=m.migration_id, target_device=m.target_device
            )
        )
        await send_command(self.js, cmd)

    async def _send_in(self, m: hub_pb2.Migration) -> None:
        cmd = new_command(m.target_device, self.issued_by)
        cmd.command_id = f"{m.migration_id}-in-{m.to_epoch}"
        cmd.epoch = m.to_epoch
        cmd.migrate_in.CopyFrom(
            commands_pb2.MigrateIn(
                agent_id=m.agent_id,
                migration_id=m.migration_id,
                epoch=m.to_epoch,
                source_device=m.source_device,
                digest=m.digest,
            )
        )
        await send_command(self.js, cmd)

    # devices -------------------------------------------------------------------------------------
    async def _mine(
        self, device: str, agent_id: str, migration_id: str, role: str
    ) -> Stored[hub_pb2.Migration]:
        found = await self.store.get(agent_id)
        if found is None or found.value.migration_id != migration_id:
            raise _refuse(ErrorCode.NOT_FOUND, f"no migration {migration_id!r} of agent {agent_id!r}")
        m = found.value
        if (m.source_device if role == "source" else m.target_device) != device:
            raise _refuse(
                ErrorCode.PERMISSION_DENIED, f"migration {migration_id}: device {device} is not its {role}"
            )
        return found

    async def put_handover(self, device: str, req: hub_pb2.PutHandoverRequest) -> hub_pb2.Migration:
        """The source hands the agent over (or refuses); idempotent."""
        found = await self._mine(device, req.agent_id, req.migration_id, "source")
        m = _copy(found.value)
        if m.phase != H.MIGRATION_PHASE_EXPORTING or m.rolled_back_from:
            return m  # done before (a repeated hand-over), or failed: the answer tells the source
        if req.refused:
            return await self._fail(found, f"the source refused: {req.refused[:500]}")
        problem = bundle_problem(req.bundle, req.digest, req.agent_id)
        if problem:
            return await self._fail(found, f"the source's state is unusable: {problem}")
        bundle = agent_pb2.AgentBundle.FromString(req.bundle)
        await (await self._store()).put(m.migration_id, req.bundle)
        m.step, m.bytes, m.digest = bundle.state.step, len(req.bundle), req.digest
        m.exported_at = time.time()
        m.stopped_at = bundle.exported_at.ToMilliseconds() / 1000
        return await self._hand_to(m, found.revision, m.target_device)

    async def _hand_to(self, m: hub_pb2.Migration, revision: int, target: str) -> hub_pb2.Migration:
        """Move the agent's record to ``target`` with the migration's ``to_epoch`` (CAS, idempotent),
        then the migration (``m``, stored at ``revision``) to importing, then MigrateIn to the target."""
        moved = await self.agents.transfer(
            m.agent_id, m.from_epoch, m.to_epoch, target, m.step, m.migration_id
        )
        if not moved:
            return await self._fail(
                Stored("", m, revision), "the agent's epoch moved on meanwhile (another owner)"
            )
        failpoints.hit("migration.transferred", m.step)
        m.phase, m.target_device = H.MIGRATION_PHASE_IMPORTING, target
        m = await self._put(m, revision)
        failpoints.hit("migration.importing", m.step)
        await self._send_in(m)
        return m

    async def _fail(self, found: Stored[hub_pb2.Migration], error: str) -> hub_pb2.Migration:
        m = _copy(found.value)
        m.phase, m.error = H.MIGRATION_PHASE_FAILED, error
        log.warning("migration %s of %s failed: %s", m.migration_id, m.agent_id, error)
        return await self._put(m, found.revision)

    async def get_handover(self, device: str, req: hub_pb2.GetHandoverRequest) -> hub_pb2.Handover:
        found = await self._mine(device, req.agent_id, req.migration_id, "target")
        m = found.value
        if m.phase != H.MIGRATION_PHASE_IMPORTING:
            raise _refuse(
                ErrorCode.FAILED_PRECONDITION, f"migration {m.migration_id} is {phase_name(m.phase)}"
            )
        try:
            obj = await (await self._store()).get(m.migration_id)
        except NotFoundError:
            raise _refuse(ErrorCode.NOT_FOUND, f"migration {m.migration_id}: its state is gone") from None
        data = bytes(obj.data or b"")
        return hub_pb2.Handover(bundle=data, digest=digest_of(data), epoch=m.to_epoch)

    async def complete(self, device: str, req: hub_pb2.CompleteHandoverRequest) -> hub_pb2.Migration:
        """The target resumed the agent (done), or could not import it (given back to the source)."""
        found = await self._mine(device, req.agent_id, req.migration_id, "target")
        m = _copy(found.value)
        if m.phase != H.MIGRATION_PHASE_IMPORTING:
            return m
        if req.refused:
            return await self._give_back(found, device, req.refused)
        m.phase = H.MIGRATION_PHASE_ROLLED_BACK if m.rolled_back_from else H.MIGRATION_PHASE_DONE
        m.done_at, m.resumed_at = time.time(), req.resumed_at
        m = await self._put(m, found.revision)
        with contextlib.suppress(Exception):  # it expires anyway (HANDOVER_TTL_S)
            await (await self._store()).delete(m.migration_id)
        log.info(
            "migration %s of %s: %s on %s at step %s",
            m.migration_id,
            m.agent_id,
            phase_name(m.phase),
            device,
            m.step,
        )
        return m

    async def _give_back(
        self, found: Stored[hub_pb2.Migration], device: str, refused: str
    ) -> hub_pb2.Migration:
        """The target could not import the agent: back to the source with epoch + 1."""
        m = _copy(found.value)
        if m.rolled_back_from:  # the source cannot take its own agent back: stuck, say so
            return await self._fail(found, f"the source could not take the agent back: {refused}")
        log.warning(
            "migration %s: %s refused the agent (%s); giving it back", m.migration_id, device, refused
        )
        m.rolled_back_from, m.error = device, f"the target refused: {refused[:500]}"
        m.from_epoch, m.to_epoch = m.to_epoch, m.to_epoch + 1
        return await self._hand_to(m, found.revision, m.source_device)

    # recovery ------------------------------------------------------------------------------------
    async def redrive(self, older_than_s: float = 0.0) -> int:
        """Re-send what an in-flight migration waits for (a lost command, a hub that died between two
        steps); returns how many were re-driven."""
        now, count = time.time(), 0
        for found in await self.store.list():
            m = found.value
            if m.phase not in IN_FLIGHT or now - m.updated_at < older_than_s:
                continue
            count += 1
            await self._redrive(found)
        return count

    async def _redrive(self, found: Stored[hub_pb2.Migration]) -> None:
        m = _copy(found.value)
        if m.phase == H.MIGRATION_PHASE_IMPORTING:
            log.info("migration %s: MigrateIn to %s sent again", m.migration_id, m.target_device)
            await self._send_in(m)
            return
        record = await self.agents.get(m.agent_id)
        if record is not None and record.epoch == m.to_epoch:
            # the record moved but the hub died before the migration did: roll forward from the
            # stored state (its digest is the object's)
            with contextlib.suppress(NotFoundError):
                obj = await (await self._store()).get(m.migration_id)
                data = bytes(obj.data or b"")
                m.digest, m.bytes, m.step = digest_of(data), len(data), record.epochs[-1].from_step
                log.info(
                    "migration %s: the epoch had moved; handing over to %s", m.migration_id, m.target_device
                )
                await self._hand_to(m, found.revision, m.target_device)
                return
        log.info("migration %s: MigrateOut to %s sent again", m.migration_id, m.source_device)
        await self._send_out(m)

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
