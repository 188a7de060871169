"""The device twin, built in this one place: what the daemon reports about itself on every heartbeat
(``edgehub.v1.DeviceTwin``, protocol/proto/edgehub/v1/twin.proto).

The hub link writes it to the ``edgehub-devices`` bucket under this device's key; the hub reads it for
the fleet view, for placement (tools, labels, model, load, free slots, memories) and for migrations.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Protocol

from edgehub.llm import Brain
from edgehub.llm.settings import DEFAULT_MODEL_NAME
from edgehub.protocol.keywords import keywords
from edgehub.protocol.v1 import policy_pb2, twin_pb2
from edgehub.sync.records import ProtoCodec

from ..config import EdgeConfig
from ..errors import StoreRolledBack

log = logging.getLogger("edgehub.edge.uplink.twin")
T = twin_pb2
TWIN_SCHEMA_VERSION = 1
"""``DeviceTwin.schema_version`` this daemon writes."""
TWINS = ProtoCodec(T.DeviceTwin, TWIN_SCHEMA_VERSION)
"""The twin's one serialisation (the hub's reader also takes the JSON twins of earlier releases)."""
MEMORY_KEYWORDS = 50
"""Words of its L3 memories a device reports (its twin's ``memories``)."""
MEMORY_KEYWORDS_S = 60.0
"""The memories' words are recomputed at most this often."""


def daemon_version() -> str:
    """This daemon's version (the edgehub-edge package's)."""
    try:
        return version("edgehub-edge")
    except PackageNotFoundError:
        return "unknown"


class TwinSource(Protocol):
    """What the twin reads from the store."""

    def outbox_depth(self) -> int: ...

    def outbox_head(self) -> int: ...

    def recent_episode_texts(self, limit: int = 500) -> list[str]: ...

    def held_agents(self) -> list[str]: ...


def hardware_profile(apply: bool) -> T.HardwareProfile:
    """This machine's hardware profile (``edgehub hardware detect``) and the settings it implies;
    ``apply``: the daemon lays them under its config (``[device] apply_profile``)."""
    try:
        from edgehub.hardware import this_machine

        s = this_machine()
    except Exception as exc:  # a broken profile must not stop the daemon: report why instead
        log.warning("hardware profile unavailable: %s", exc)
        return T.HardwareProfile(name="", error=str(exc)[:300])
    settings = T.ProfileSettings(
        threads=s.threads,
        n_ctx=s.n_ctx,
        n_batch=s.n_batch,
        model=s.model,
        quantisation=s.quantisation,
        model_max_params_b=s.model_max_params_b,
        model_max_mb=s.model_max_mb,
        snapshot_dir=str(s.snapshot_dir) if s.snapshot_dir else "",
        snapshot_max_mb=s.snapshot_max_mb,
        sandbox_memory_mb=s.sandbox_memory_mb,
        sandbox_max_pids=s.sandbox_max_pids,
        storage=s.storage,
    )
    return T.HardwareProfile(name=s.profile, settings=settings, apply=apply)


class TwinReporter:
    """Builds this device's twin from the daemon's parts, at the moment it is asked for."""

    def __init__(
        self,
        cfg: EdgeConfig,
        store: TwinSource,
        brain: Brain,
        *,
        tools: Sequence[str],
        running: Callable[[], list[str]],
        draining: Callable[[], bool],
        paused: Callable[[], str] = lambda: "",
        policy: Callable[[], policy_pb2.RunningPolicy] | None = None,
        restricted: StoreRolledBack | None = None,
        shadow: Callable[[], tuple[str, str]] = lambda: ("", ""),
    ) -> None:
        self.cfg = cfg
        self.restricted = restricted
        """Why the daemon runs restricted (its store lost commits); None: it runs normally."""
        self.store = store
        self.brain = brain
        self.tools = list(tools)
        """The tools its agents may call (what the hub's planner places tasks by)."""
        self.running = running
        self.draining = draining
        self.paused = paused
        """Why its agents are paused ('': they are not): a full disk (``pressure.py``)."""
        self.policy = policy
        """The safety policy in force and the last bundle refused (``HubPolicy.running``)."""
        self.shadow = shadow
        """The rollout running a model in shadow here and that model's sha256 (empty: none)."""
        self._memories: list[str] = []
        self._memories_at = -MEMORY_KEYWORDS_S

    @functools.cached_property
    def profile(self) -> T.HardwareProfile:
        """Read once: ``edgehub edge run`` lays its settings under the config; a daemon built from an
        ``EdgeConfig`` directly has what it was given."""
        return hardware_profile(self.cfg.device.apply_profile)

    def twin(self, state: T.DeviceState.ValueType = T.DEVICE_STATE_RUNNING) -> T.DeviceTwin:
        """The twin as of now (RESTRICTED instead of RUNNING, with why and the agents held, when the
        daemon runs restricted)."""
        cfg = self.cfg
        restricted = self.restricted
        shadow_rollout, shadow_model = self.shadow()
        if restricted is not None and state == T.DEVICE_STATE_RUNNING:
            state = T.DEVICE_STATE_RESTRICTED
        return T.DeviceTwin(
            schema_version=TWIN_SCHEMA_VERSION,
            device_id=cfg.device.id,
            state=state,
            heartbeat_s=cfg.hub.heartbeat_s,
            sent_at=time.time(),
            version=daemon_version(),
            hardware=T.Hardware(arch=platform.machine(), cpus=os.cpu_count() or 0, kernel=platform.release()),
            load=os.getloadavg()[0],
            outbox_depth=self.store.outbox_depth(),
            agents_running=self.running(),
            max_concurrent=cfg.agent.max_concurrent,
            draining=self.draining(),
            tools=self.tools,
            labels=cfg.device.labels,
            model=self.brain.fingerprint,
            model_name=cfg.model.path.stem if cfg.model.path else DEFAULT_MODEL_NAME,
            profile=self.profile,
            memories=self.memories(),
            outbox_head=self.store.outbox_head(),
            paused_reason=self.paused(),
            policy=self.policy() if self.policy is not None else None,
            restricted=str(restricted) if restricted is not None else "",
            agents_held=self.store.held_agents() if restricted is not None else [],
            shadow_rollout=shadow_rollout,
            shadow_model=shadow_model,
        )

    def memories(self) -> list[str]:
        """The words this device's L3 memories are most about (data locality for the hub's planner),
        recomputed at most every ``MEMORY_KEYWORDS_S``; none without episodic memory."""
        now = time.monotonic()
        if now - self._memories_at < MEMORY_KEYWORDS_S:
            return self._memories
        self._memories_at = now
        if self.cfg.memory.episodic:
            self._memories = keywords(self.store.recent_episode_texts(), limit=MEMORY_KEYWORDS)
        return self._memories
