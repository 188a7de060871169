"""Fleet policy (issue 20): policy pushes kept by version, one signed bundle per device, sent in the
device's commands (``edgehub.sync.policies``).

A push takes the next fleet-wide version by creating its record (``edgehub-policies``, key: the
version; a create that meets one made meanwhile takes the next), so versions only grow, on any number
of hub processes; the ``latest`` record (a copy of the highest push, advanced by compare-and-set) says
where to start. Nothing lists the bucket's keys: a KV key listing can end early under load (nats-py's
watcher may signal "no more" before the messages it was sent are counted), and a version must never
be taken twice nor a device left out of ``status`` for that.

For each selected device the hub signs a ``PolicyBundle`` naming it, keeps it as the device's latest
(``edgehub-policy-devices``: what the device's ``GetPolicy`` answers on start, so one offline during
the push converges) and sends it in an ``ApplyPolicy`` command. A rollback is a push of an earlier
version's text under a new version: a device never goes back in version. ``status`` lists the devices
that reported a twin and those of the latest push.

The hub checks only that the text is TOML with an integer ``version`` under ``MAX_POLICY_BYTES``; the
device checks the rules (its ``PolicyModel``, which the hub does not import) and reports a refusal in
its twin's ``policy``, which ``status`` shows beside what was sent.
"""

from __future__ import annotations

import logging
import time
import tomllib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Protocol

from nats.js import JetStreamContext

from edgehub.protocol.errors import ErrorCode
from edgehub.protocol.ids import check_device_id
from edgehub.protocol.v1 import hub_pb2, policy_pb2
from edgehub.sync.commands import new_command
from edgehub.sync.decisions import SigningKey
from edgehub.sync.policies import ASSIGNMENTS, MAX_POLICY_BYTES, PUSHES, sign_bundle, text_sha256
from edgehub.sync.records import RecordExists, RecordStore, Stored
from edgehub.sync.streams import POLICIES, POLICY_DEVICES

from ..errors import Refused
from .control import Commands
from .scopes import Scope, ScopeGuard, check_labels, describe_labels

log = logging.getLogger("edgehub.hub.fleet.policies")
H, P = hub_pb2, policy_pb2


class Seen(Protocol):
    """A device as the hub's fleet view has it (``goals.DeviceView``)."""

    @property
    def device_id(self) -> str: ...

    @property
    def labels(self) -> Mapping[str, str]: ...

    @property
    def hub_labels(self) -> Mapping[str, str]: ...


Views = Callable[[], Awaitable[Sequence[Seen]]]
LATEST = "latest"
"""The key of the copy of the highest push (the others are keyed by their version)."""
PUSH_ATTEMPTS = 16
"""Versions a push tries before giving up (each taken meanwhile by another push)."""


def _invalid(message: str) -> Refused:
    return Refused(ErrorCode.INVALID_ARGUMENT, message)


def check_text(text: str) -> None:
    """The hub's check of a pushed policy: bounded TOML with an integer ``version`` (the device checks
    the rest), else INVALID_ARGUMENT."""
    if len(text.encode()) > MAX_POLICY_BYTES:
        raise _invalid(f"the policy is {len(text.encode())} bytes, at most {MAX_POLICY_BYTES}")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _invalid(f"the policy is not valid TOML: {exc}") from None
    if not isinstance(data.get("version"), int) or isinstance(data.get("version"), bool):
        raise _invalid("the policy has no integer `version` (a policy file starts with `version = 2`)")


def describe_target(target: H.PolicyTarget) -> str:
    if target.all:
        return "all"
    return ",".join(target.device_ids) or describe_labels(target.labels)


def selected(target: H.PolicyTarget, views: Iterable[Seen]) -> list[str]:
    """The devices ``target`` picks among those that reported: all, by id (named ones that never
    reported too), or carrying every label (hub-assigned over reported, as a goal's ``--devices``)."""
    if sum((target.all, bool(target.device_ids), bool(target.labels))) != 1:
        raise _invalid("choose the devices one way: all, device ids, or labels")
    if target.device_ids:
        return sorted({check_device_id(d, "device") for d in target.device_ids})
    labels = check_labels(target.labels, "devices")
    return sorted(
        v.device_id
        for v in views
        if target.all or all((dict(v.labels) | dict(v.hub_labels)).get(k) == val for k, val in labels.items())
    )


async def target_devices(
    target: H.PolicyTarget, scope: Scope, views: Sequence[Seen], scopes: ScopeGuard, what: str
) -> list[str]:
    """The devices ``target`` picks among those ``scope`` sees (a device named by id outside it is
    refused); INVALID_ARGUMENT when none matches. Policy pushes and model rollouts select alike."""
    if not scope.fleet_wide and not target.device_ids:
        views = [v for v in views if scopes.sees(scope, v.device_id)]
    devices = selected(target, views)
    if not devices:
        raise _invalid(f"no device matches {describe_target(target)}")
    for device_id in devices:
        await scopes.device(scope, device_id, what)
    return devices


class FleetPolicies:
    """Pushes, rollbacks and status of fleet policy (see the module docstring)."""

    def __init__(
        self, js: JetStreamContext, signer: SigningKey, commands: Commands, views: Views, scopes: ScopeGuard
    ) -> None:
        self.pushes = RecordStore(js, POLICIES.name, PUSHES)
        self.assignments = RecordStore(js, POLICY_DEVICES.name, ASSIGNMENTS)
        self.signer = signer
        self.commands = commands
        self.views = views
        self.scopes = scopes

    async def latest(self) -> P.PolicyPush | None:
        found = await self.pushes.get(LATEST)
        return found.value if found is not None else None

    async def get(self, version: int) -> P.PolicyPush | None:
        found = await self.pushes.get(str(version))
        return found.value if found is not None else None

    async def push(
        self, req: H.PushPolicyRequest, by: str, scope: Scope, *, rollback_of: int = 0
    ) -> P.PolicyPush:
        """Keep ``req.text`` as the next version and send it, signed, to each device it selects."""
        check_text(req.text)
        devices = await self._devices(req.target, scope)
        record = P.PolicyPush(
            text=req.text, sha256=text_sha256(req.text), pushed_by=by, pushed_at=time.time(),
            selector=describe_target(req.target), devices=devices, note=req.note, rollback_of=rollback_of,
        )  # fmt: skip
        latest = await self.latest()
        record.version = latest.version if latest is not None else 0
        for _ in range(PUSH_ATTEMPTS):
            record.version += 1
            try:
                await self.pushes.create(str(record.version), record)
                break
            except RecordExists:  # another push took it
                continue
        else:
            raise Refused(
                ErrorCode.ABORTED, "other pushes took every version tried; push again", retryable=True
            )
        await self.pushes.update(LATEST, lambda found: _later(found, record))
        for device_id in devices:
            await self._send(record, device_id)
        log.warning(
            "policy version %d (%s) pushed by %s to %s", record.version, record.sha256[:12], by, devices
        )
        return record

    async def _devices(self, target: H.PolicyTarget, scope: Scope) -> list[str]:
        return await target_devices(target, scope, await self.views(), self.scopes, "PushPolicy")

    async def _send(self, record: P.PolicyPush, device_id: str) -> None:
        bundle = P.PolicyBundle(
            version=record.version, text=record.text, pushed_by=record.pushed_by,
            pushed_at=record.pushed_at, device_id=device_id, note=record.note,
        )  # fmt: skip
        signed = sign_bundle(self.signer, bundle)
        await self.assignments.put(
            device_id, P.PolicyAssignment(version=record.version, sha256=record.sha256, signed=signed)
        )
        cmd = new_command(device_id, record.pushed_by)
        cmd.apply_policy.policy.CopyFrom(signed)
        await self.commands.send(cmd)

    async def rollback(self, req: H.RollbackPolicyRequest, by: str, scope: Scope) -> P.PolicyPush:
        """Push version ``req.to_version``'s text again as a new version (default: the one before the
        latest), to ``req.target`` (default: the devices of the latest push)."""
        latest = await self.latest()
        if latest is None:
            raise Refused(ErrorCode.NOT_FOUND, "no policy was pushed: nothing to roll back")
        to = req.to_version or latest.version - 1  # versions are dense: none is ever deleted
        earlier = await self.get(to) if to else None
        if earlier is None:
            raise Refused(ErrorCode.NOT_FOUND, f"no policy version {to} to roll back to" if to else
                          "only one version was pushed: give --to, or push a file")  # fmt: skip
        target = req.target if req.HasField("target") else H.PolicyTarget(device_ids=latest.devices)
        again = H.PushPolicyRequest(text=earlier.text, target=target, note=f"rollback to version {to}")
        return await self.push(again, by, scope, rollback_of=to)

    async def assignment(self, device_id: str) -> P.SignedPolicy:
        """The device's latest bundle (empty: none was pushed to it)."""
        found = await self.assignments.get(device_id)
        return found.value.signed if found is not None else P.SignedPolicy()

    async def status(self, scope: Scope, twins: Mapping[str, H.Device]) -> H.PolicyStatusResponse:
        """Each device's sent version beside what its twin reports (``twins``: the devices by id)."""
        out = H.PolicyStatusResponse()
        latest = await self.latest()
        for device_id in sorted(set(twins) | set(latest.devices if latest is not None else ())):
            if not self.scopes.sees(scope, device_id):
                continue
            row = H.DevicePolicy(device_id=device_id)
            if (a := await self.assignments.get(device_id)) is not None:
                row.sent_version, row.sent_sha256 = a.value.version, a.value.sha256
            if (d := twins.get(device_id)) is not None and d.twin.HasField("policy"):
                row.running.CopyFrom(d.twin.policy)
            row.online = d is not None and d.online
            row.state = _state(row)
            out.devices.append(row)
        if latest is not None:
            out.latest.CopyFrom(latest)
        return out


def _later(found: Stored[P.PolicyPush] | None, record: P.PolicyPush) -> P.PolicyPush | None:
    """``latest`` moved to ``record``, unless a higher push is there already (None: left as it is)."""
    return record if found is None or found.value.version < record.version else None


def _state(row: H.DevicePolicy) -> str:
    running = row.running
    if not row.sent_version:
        return "local"
    if running.source == "hub" and running.version == row.sent_version:
        return "current"
    if running.refused_version == row.sent_version:
        return "refused"
    return "pending"
