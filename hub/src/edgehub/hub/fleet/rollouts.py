"""Parity-gated rollouts (issue 21 part 3; docs/models.md): a new model runs in shadow on a wave of
devices, the hub compares its proposals with the running model's actions (``parity.py``), and the wave
is promoted (``UseModel``) or the rollout halted, automatically.

A rollout is one record in ``edgehub-rollouts`` (``RolloutRecord``, key: its id), changed only by
compare-and-set, so any number of hub processes may apply shadow steps and answer the API. Starting
one picks the devices by the selector ``edgehub policy push`` uses, splits them into waves
(``parity.plan_waves``) and sends the first wave ``ShadowModel``. Each ``ShadowStep`` event counts for
the wave being shadowed when its device (the one the event's subject authenticated, never a payload
field) is in that wave and it names this rollout; any other is ignored and counted
(``ignored_steps``, and ``RolloutService.ignored`` for a rollout that does not exist). A device's
redelivered event counts once (``applied_seq``). When the window decides (``parity.verdict``):

- halt: the wave's shadows stop (``ShadowModel stop``), the rollout is halted with the mean, the
  threshold and the most divergent examples kept for ``status``;
- promote: the wave's shadows stop, its devices get ``UseModel`` (part 2 of the issue handles it on
  the device), and the next wave starts shadowing; after the last wave the rollout is promoted.

A wave in shadow that has not filled its window after ``wave_timeout_s`` (``[rollouts]``) is halted the
same way, with the steps it had: every rollout step ends with an outcome. Commands are sent after the
record that decided them is written. A rollback stops the shadows of the
wave in progress and sends every promoted wave's devices ``UseModel`` of the model each ran before
(its twin's ``model_sha256`` when the wave started; a device that reported none is named in the
decision instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence

from nats.js import JetStreamContext

from edgehub.protocol.errors import ErrorCode
from edgehub.protocol.ids import InvalidId, check_id, check_sha256
from edgehub.protocol.v1 import commands_pb2, events_pb2, hub_pb2, models_pb2
from edgehub.sync.commands import new_command
from edgehub.sync.records import ProtoCodec, RecordStore, Stored
from edgehub.sync.streams import ROLLOUTS

from ..errors import Refused
from . import parity
from .control import Commands
from .policies import Seen, describe_target, target_devices
from .scopes import Scope, ScopeGuard

log = logging.getLogger("edgehub.hub.fleet.rollouts")
H, M = hub_pb2, models_pb2
ROLLOUT_RECORD_VERSION = 1
RECORDS = ProtoCodec(M.RolloutRecord, ROLLOUT_RECORD_VERSION)
DEFAULT_WINDOW = 20
DEFAULT_THRESHOLD = 0.25
MAX_WINDOW = 10_000
Twins = Callable[[], Awaitable[Sequence[H.Device]]]
Views = Callable[[], Awaitable[Sequence[Seen]]]


def _invalid(message: str) -> Refused:
    return Refused(ErrorCode.INVALID_ARGUMENT, message)


def _command(device_id: str, by: str) -> commands_pb2.Command:
    return new_command(device_id, by)


class RolloutService:
    """Starts, gates, reports and rolls back rollouts (see the module docstring)."""

    def __init__(
        self,
        js: JetStreamContext,
        commands: Commands,
        views: Views,
        twins: Twins,
        scopes: ScopeGuard,
        *,
        wave_timeout_s: float = 86400.0,
        check_s: float = 30.0,
    ) -> None:
        self.records = RecordStore(js, ROLLOUTS.name, RECORDS)
        self.wave_timeout_s = wave_timeout_s
        self.check_s = check_s
        self.commands = commands
        self.views = views
        self.twins = twins
        self.scopes = scopes
        self.ignored = 0
        """Shadow steps naming a rollout that does not exist (or an invalid one)."""

    # starting --------------------------------------------------------------------------------------
    async def start(self, req: H.StartRolloutRequest, by: str, scope: Scope) -> M.RolloutRecord:
        record = await self._plan(req, by, scope)
        await self.records.create(record.rollout_id, record)
        await self._send(record, shadow=record.waves[0].device_ids)
        log.warning("rollout %s of %s by %s: %s", record.rollout_id, record.sha256[:12], by, record.decision)
        return record

    async def _plan(self, req: H.StartRolloutRequest, by: str, scope: Scope) -> M.RolloutRecord:
        try:
            check_sha256(req.sha256)
        except InvalidId as exc:
            raise _invalid(exc.message) from None
        window = req.window or DEFAULT_WINDOW
        threshold = req.threshold or DEFAULT_THRESHOLD
        if not 1 <= window <= MAX_WINDOW or not 0.0 < threshold <= 1.0:
            raise _invalid(f"window must be 1..{MAX_WINDOW} steps and threshold in (0, 1]")
        devices = await self._devices(req.target, scope)
        await self._not_busy(devices)
        try:
            waves = parity.plan_waves(devices, req.waves)
        except parity.BadWaves as exc:
            raise _invalid(str(exc)) from None
        rollout = M.RolloutRecord(
            schema_version=ROLLOUT_RECORD_VERSION, rollout_id=f"r-{uuid.uuid4().hex[:12]}",
            sha256=req.sha256, name=req.name or req.sha256[:12], selector=describe_target(req.target),
            waves_spec=req.waves or "all", window=window, threshold=threshold, state="shadowing",
            started_by=by, started_at=time.time(),
        )  # fmt: skip
        for i, members in enumerate(waves):
            rollout.waves.add(device_ids=members, state="shadowing" if i == 0 else "pending")
        start_wave(rollout.waves[0], await self._models_now())
        rollout.decision = f"wave 1 of {len(waves)} ({len(waves[0])} devices) in shadow"
        return rollout

    async def _devices(self, target: H.PolicyTarget, scope: Scope) -> list[str]:
        return await target_devices(target, scope, await self.views(), self.scopes, "StartRollout")

    async def _not_busy(self, devices: Sequence[str]) -> None:
        """A device shadows one model at a time: one that another rollout still shadows or will
        (a wave not decided yet) cannot join this one (FAILED_PRECONDITION)."""
        for stored in await self.records.list():
            other = stored.value
            if other.state != "shadowing":
                continue
            busy = sorted({d for w in other.waves[other.current_wave :] for d in w.device_ids} & set(devices))
            if busy:
                raise Refused(
                    ErrorCode.FAILED_PRECONDITION,
                    f"{', '.join(busy[:5])} in rollout {other.rollout_id}, undecided: roll it back first",
                )

    async def _models_now(self) -> dict[str, str]:
        """Each device's model as its twin reports it ('' when it reports none)."""
        return {d.device_id: d.twin.model_sha256 for d in await self.twins()}

    # shadow steps ----------------------------------------------------------------------------------
    async def apply(self, events: Iterable[events_pb2.EdgeEvent]) -> None:
        """Count each shadow step into its rollout's wave; send what a decision asks for."""
        by_rollout: dict[str, list[events_pb2.EdgeEvent]] = {}
        for event in events:
            by_rollout.setdefault(event.shadow_step.rollout_id, []).append(event)
        for rollout_id, steps in by_rollout.items():
            await self._apply(rollout_id, steps)

    async def _apply(self, rollout_id: str, steps: list[events_pb2.EdgeEvent]) -> None:
        try:
            check_id(rollout_id, "rollout_id")
            found = await self.records.get(rollout_id)
        except InvalidId:
            found = None
        if found is None:
            self.ignored += len(steps)
            log.warning("%d shadow steps for unknown rollout %r ignored", len(steps), rollout_id[:40])
            return
        await self._transition(rollout_id, lambda record: count_steps(record, steps))

    async def _transition(self, rollout_id: str, mutate: Callable[[M.RolloutRecord], bool]) -> None:
        """Change the record by ``mutate`` (compare-and-set; it returns whether it changed anything),
        then send the commands of a decision it made."""
        before: list[M.RolloutRecord] = []

        def change(stored: Stored[M.RolloutRecord] | None) -> M.RolloutRecord | None:
            if stored is None:
                return None
            before[:] = [stored.value]
            record = M.RolloutRecord()
            record.CopyFrom(stored.value)
            return record if mutate(record) else None

        written = await self.records.update(rollout_id, change)
        if written is None or not before:
            return
        old, new = before[0], written.value
        if (new.current_wave, new.state) != (old.current_wave, old.state):
            await self._decided(old, new)

    async def _decided(self, old: M.RolloutRecord, new: M.RolloutRecord) -> None:
        """Send the commands of the decision that turned ``old`` into ``new``."""
        wave = new.waves[old.current_wave]
        log.warning("rollout %s: %s", new.rollout_id, wave.decision)
        if wave.state == "promoted":
            await self._send(new, stop=wave.device_ids, use=[(d, new.sha256) for d in wave.device_ids])
            if new.current_wave < len(new.waves):
                await self._start_wave(new)
        else:
            await self._send(new, stop=wave.device_ids)

    async def _start_wave(self, record: M.RolloutRecord) -> None:
        """The next wave shadows: what its devices run now is kept (a rollback's target)."""
        models, index = await self._models_now(), record.current_wave

        def change(stored: Stored[M.RolloutRecord] | None) -> M.RolloutRecord | None:
            if stored is None or stored.value.current_wave != index or stored.value.state != "shadowing":
                return None
            new = M.RolloutRecord()
            new.CopyFrom(stored.value)
            start_wave(new.waves[index], models)
            return new

        await self.records.update(record.rollout_id, change)
        await self._send(record, shadow=record.waves[index].device_ids)

    async def _send(
        self,
        record: M.RolloutRecord,
        *,
        shadow: Sequence[str] = (),
        stop: Sequence[str] = (),
        use: Sequence[tuple[str, str]] = (),
    ) -> None:
        by = f"rollout:{record.rollout_id}"
        for device_id in shadow:
            cmd = _command(device_id, by)
            cmd.shadow_model.CopyFrom(
                M.ShadowModel(rollout_id=record.rollout_id, sha256=record.sha256, name=record.name)
            )
            await self.commands.send(cmd)
        for device_id in stop:
            cmd = _command(device_id, by)
            cmd.shadow_model.CopyFrom(
                M.ShadowModel(rollout_id=record.rollout_id, sha256=record.sha256, stop=True)
            )
            await self.commands.send(cmd)
        for device_id, sha256 in use:
            cmd = _command(device_id, by)
            cmd.use_model.CopyFrom(
                M.UseModel(sha256=sha256, rollout_id=record.rollout_id, reason=record.decision)
            )
            await self.commands.send(cmd)

    # timeouts --------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Halt waves past ``wave_timeout_s`` every ``check_s`` (every hub process: the record's
        compare-and-set lets one of them decide)."""
        while not stop.is_set():
            try:
                await self.expire(time.time())
            except Exception as exc:  # NATS restarting: the next round retries
                log.warning("rollout timeouts not checked (%s: %s)", type(exc).__name__, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.check_s)

    async def expire(self, now: float) -> None:
        """Halt every rollout whose wave in shadow started more than ``wave_timeout_s`` ago."""
        for stored in await self.records.list():
            if stored.value.state != "shadowing" or not timed_out(stored.value, now, self.wave_timeout_s):
                continue
            await self._transition(stored.value.rollout_id, lambda r: halt_late(r, now, self.wave_timeout_s))

    # status and rollback ---------------------------------------------------------------------------
    async def status(self, rollout_id: str, scope: Scope) -> H.RolloutStatusResponse:
        """One rollout (each of its devices in ``scope``, else OutOfScope), or every rollout whose
        devices are all in ``scope``, newest first."""
        if rollout_id:
            record = await self._get(rollout_id)
            await self._in_scope(record, scope, "RolloutStatus")
            return H.RolloutStatusResponse(rollouts=[record])
        records = sorted((s.value for s in await self.records.list()), key=lambda r: -r.started_at)
        shown = [r for r in records if all(self.scopes.sees(scope, d) for w in r.waves for d in w.device_ids)]
        return H.RolloutStatusResponse(rollouts=shown)

    async def _in_scope(self, record: M.RolloutRecord, scope: Scope, what: str) -> None:
        for wave in record.waves:
            for device_id in wave.device_ids:
                await self.scopes.device(scope, device_id, what)

    async def _get(self, rollout_id: str) -> M.RolloutRecord:
        try:
            check_id(rollout_id, "rollout_id")
        except InvalidId as exc:
            raise _invalid(exc.message) from None
        found = await self.records.get(rollout_id)
        if found is None:
            raise Refused(ErrorCode.NOT_FOUND, f"no rollout {rollout_id}")
        return found.value

    async def rollback(self, rollout_id: str, by: str, scope: Scope) -> M.RolloutRecord:
        """Stop the shadows in progress; promoted waves go back to the model each device ran before."""
        record = await self._get(rollout_id)
        await self._in_scope(record, scope, "RollbackRollout")
        if record.state == "rolled_back":
            return record
        old = M.RolloutRecord()
        old.CopyFrom(record)

        def change(stored: Stored[M.RolloutRecord] | None) -> M.RolloutRecord | None:
            if stored is None or stored.value.state == "rolled_back":
                return None
            new = M.RolloutRecord()
            new.CopyFrom(stored.value)
            roll_back(new, by)
            old.CopyFrom(stored.value)
            return new

        written = await self.records.update(rollout_id, change)
        assert written is not None
        new = written.value
        shadowing = [d for w in old.waves if w.state == "shadowing" for d in w.device_ids]
        back = [
            (d, w.previous[d])
            for w in old.waves
            if w.state == "promoted"
            for d in w.device_ids
            if w.previous.get(d)
        ]
        await self._send(new, stop=shadowing, use=back)
        log.warning("rollout %s rolled back by %s: %s", rollout_id, by, new.decision)
        return new


def count_steps(record: M.RolloutRecord, events: Sequence[events_pb2.EdgeEvent]) -> bool:
    """Count ``events`` into ``record`` (see the module docstring); True when it changed."""
    changed = False
    for event in events:
        changed = True
        index = record.current_wave
        wave = record.waves[index] if record.state == "shadowing" and index < len(record.waves) else None
        if wave is None or wave.state != "shadowing" or event.device_id not in wave.device_ids:
            record.ignored_steps += 1
            continue
        if event.seq <= wave.applied_seq.get(event.device_id, 0):
            continue  # applied already (a redelivery)
        wave.applied_seq[event.device_id] = event.seq
        step = event.shadow_step
        if step.shadow_model != record.sha256:
            record.ignored_steps += 1
            continue
        parity.count(wave, parity.example(event.device_id, event.agent_id, step, parity.divergence(step)))
        _decide(record, wave)
    return changed


def _decide(record: M.RolloutRecord, wave: M.RolloutWave) -> None:
    verdict = parity.verdict(wave, record.window, record.threshold)
    if not verdict:
        return
    now = time.time()
    where = f"wave {record.current_wave + 1} of {len(record.waves)}"
    figures = (
        f"mean divergence {wave.divergence:.3f} over {wave.steps} steps, threshold {record.threshold:.3f}"
    )
    wave.decided_at = now
    if verdict == "halt":
        wave.state = "halted"
        wave.decision = f"{where} halted: {figures}"
        record.state, record.decision, record.decided_at = "halted", wave.decision, now
        return
    wave.state = "promoted"
    wave.decision = f"{where} promoted: {figures}"
    record.current_wave += 1
    record.decision = wave.decision
    if record.current_wave >= len(record.waves):
        record.state, record.decided_at = "promoted", now
        record.decision = f"every wave promoted ({wave.decision})"
    else:
        following = record.waves[record.current_wave]
        following.state, following.started_at = "shadowing", now  # its timeout runs from now


def start_wave(wave: M.RolloutWave, models: dict[str, str]) -> None:
    """``wave`` starts shadowing now; each device's current model is kept for a rollback."""
    for device_id in wave.device_ids:
        wave.previous[device_id] = models.get(device_id, "")
    wave.started_at = time.time()


def timed_out(record: M.RolloutRecord, now: float, timeout_s: float) -> bool:
    """The rollout's wave in shadow started more than ``timeout_s`` before ``now``."""
    if record.state != "shadowing" or record.current_wave >= len(record.waves):
        return False
    return now - record.waves[record.current_wave].started_at > timeout_s


def halt_late(record: M.RolloutRecord, now: float, timeout_s: float) -> bool:
    """Halt the rollout if its wave in shadow did not fill its window within ``timeout_s``; whether it
    did."""
    if not timed_out(record, now, timeout_s):
        return False
    wave = record.waves[record.current_wave]
    wave.state, wave.decided_at = "halted", now
    wave.decision = (
        f"wave {record.current_wave + 1} of {len(record.waves)} halted: {wave.steps} of {record.window} "
        f"shadow steps in {timeout_s:g} s (devices that refused the model, ran no agents or were offline)"
    )
    record.state, record.decision, record.decided_at = "halted", wave.decision, now
    return True


def roll_back(record: M.RolloutRecord, by: str) -> None:
    unknown = [
        d for w in record.waves if w.state == "promoted" for d in w.device_ids if not w.previous.get(d)
    ]
    for wave in record.waves:
        if wave.state in ("promoted", "shadowing"):
            wave.state = "rolled_back"
    record.state, record.decided_at = "rolled_back", time.time()
    record.decision = f"rolled back by {by}" + (
        f"; no earlier model known for {', '.join(unknown)} (they keep {record.sha256[:12]})"
        if unknown
        else ""
    )
