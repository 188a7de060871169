"""The edge's side of a migration (the hub orchestrates it: ``edgehub.hub.fleet.migration``).

Source, on ``MigrateOut``: stop the agent at its step boundary (its last step is checkpointed), mark
it MIGRATED in the store (from then on this device never runs it, even after a crash), export its
state and hand it to the hub (``PutHandover`` on the device API). If the hub answers that the
migration failed before the epoch moved, the mark is undone and the agent runs here again. If the hub
is unreachable the command fails and comes back: the agent waits, stopped, in between.

Target, on ``MigrateIn``: fetch the state (``GetHandover``), check its digest, import it with the new
epoch in one transaction (the scheduler then resumes it at the same step), and report
(``CompleteHandover``). What it cannot import (digest, version, a draining device) it reports as
refused, and the hub gives the agent back to the source.

Both are idempotent (the hub may re-send either): an agent already MIGRATED for this migration is
handed over again; an agent already at the new epoch is only reported again.
"""

from __future__ import annotations

import hashlib
import logging
import time
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import grpc
from google.protobuf.message import DecodeError

from edgehub.protocol.v1 import agent_pb2, commands_pb2, hub_pb2
from edgehub.sync.errors import MessageRejected
from edgehub.testing import failpoints

from ..errors import StoreError
from ..store.base import AgentTransfer
from .api import DeviceApi, HubApiError
from .identity import DeviceIdentity

log = logging.getLogger("edgehub.edge.uplink.migration")
S = agent_pb2
MOVABLE = (S.AGENT_STATUS_PENDING, S.AGENT_STATUS_RUNNING, S.AGENT_STATUS_AWAITING_APPROVAL)


class MigrationSite(Protocol):
    """What a migration needs of the device it runs on (the daemon's command router provides it)."""

    @property
    def store(self) -> AgentTransfer: ...

    @property
    def device_id(self) -> str: ...

    @property
    def identity(self) -> DeviceIdentity | None:
        """The device's credentials for the hub's device API (None: not enrolled)."""
        ...

    @property
    def draining(self) -> bool:
        """Drained by the hub: no agent migrates in."""
        ...

    def hold(self, agent_id: str) -> AbstractAsyncContextManager[None]:
        """Stop the agent at its step boundary and keep it from being started while the block runs."""
        ...

    def schedule(self) -> None:
        """Start ready agents now (one just imported)."""
        ...


def _api(site: MigrationSite) -> DeviceApi:
    try:
        return DeviceApi(site.identity)
    except HubApiError as exc:
        raise MessageRejected(f"cannot take part in a migration: {exc}") from None


async def migrate_out(site: MigrationSite, cmd: commands_pb2.Command) -> None:
    store = site.store
    m = cmd.migrate_out
    async with _api(site) as api:
        refused = ""
        if not store.has_agent(m.agent_id):
            refused = f"device {site.device_id} has no agent {m.agent_id}"
        else:
            state = store.load_agent(m.agent_id)
            leaving = state.status == S.AGENT_STATUS_MIGRATED and state.migration_id == m.migration_id
            if not leaving and state.status not in MOVABLE:
                refused = f"agent {m.agent_id} is {S.AgentStatus.Name(state.status)} here"
        if refused:
            await api.stub.PutHandover(
                hub_pb2.PutHandoverRequest(agent_id=m.agent_id, migration_id=m.migration_id, refused=refused),
                timeout=api.timeout_s,
            )
            return
        async with site.hold(m.agent_id):  # stopped at its step boundary, and not restarted
            state = store.mark_migrated(m.agent_id, m.migration_id, m.target_device)
            data = store.export_agent(m.agent_id).SerializeToString()
        failpoints.hit("migrate_out.marked", state.step)
        log.info(
            "agent %s stopped at step %d for migration %s to %s (%d bytes)",
            m.agent_id,
            state.step,
            m.migration_id,
            m.target_device,
            len(data),
        )
        request = hub_pb2.PutHandoverRequest(
            agent_id=m.agent_id,
            migration_id=m.migration_id,
            bundle=data,
            digest=hashlib.sha256(data).hexdigest(),
        )
        try:
            migration = await api.stub.PutHandover(request, timeout=api.timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED):
                store.unmark_migrated(m.agent_id, m.migration_id)  # no such migration: nothing moved
                raise MessageRejected(f"migration {m.migration_id}: {exc.details()}") from None
            raise  # the hub is unreachable: the command comes back, the agent waits stopped
    if migration.phase == hub_pb2.MIGRATION_PHASE_FAILED:
        store.unmark_migrated(m.agent_id, m.migration_id)
        log.warning(
            "migration %s failed (%s): agent %s runs here again", m.migration_id, migration.error, m.agent_id
        )


async def migrate_in(site: MigrationSite, cmd: commands_pb2.Command) -> None:
    store = site.store
    m = cmd.migrate_in
    async with _api(site) as api:
        done = hub_pb2.CompleteHandoverRequest(agent_id=m.agent_id, migration_id=m.migration_id)
        if store.has_agent(m.agent_id) and store.load_agent(m.agent_id).epoch >= m.epoch:
            await api.stub.CompleteHandover(done, timeout=api.timeout_s)  # imported before
            return
        refused = ""
        if site.draining:
            refused = f"device {site.device_id} is draining"
        else:
            got = await api.stub.GetHandover(
                hub_pb2.GetHandoverRequest(agent_id=m.agent_id, migration_id=m.migration_id),
                timeout=api.timeout_s,
            )
            refused = _import(store, m, got)
        if refused:
            log.warning("migration %s: agent %s refused: %s", m.migration_id, m.agent_id, refused)
            done.refused = refused
        else:
            site.schedule()  # resume it now, not at the scheduler's next tick
            done.resumed_at = time.time()
        await api.stub.CompleteHandover(done, timeout=api.timeout_s)


def _import(store: AgentTransfer, m: commands_pb2.MigrateIn, got: hub_pb2.Handover) -> str:
    """Import the handed-over state; the reason it cannot be ('' when imported)."""
    digest = hashlib.sha256(got.bundle).hexdigest()
    if digest != m.digest:
        return f"the state's digest {digest[:12]} is not the source's {m.digest[:12]}"
    try:
        bundle = agent_pb2.AgentBundle.FromString(got.bundle)
    except DecodeError as exc:
        return f"not an AgentBundle ({exc})"
    if bundle.state.agent_id != m.agent_id:
        return f"the state is agent {bundle.state.agent_id!r}, not {m.agent_id!r}"
    try:
        store.import_agent(bundle, m.epoch)
    except StoreError as exc:
        return str(exc)
    failpoints.hit("migrate_in.imported", bundle.state.step)
    log.info(
        "agent %s imported from %s at step %d, epoch %d (migration %s)",
        m.agent_id,
        bundle.source_device,
        bundle.state.step,
        m.epoch,
        m.migration_id,
    )
    return ""
