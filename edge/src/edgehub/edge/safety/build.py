"""Wire the safety layer from the edge config."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..agent.tools.base import CommandRunner
from ..agent.tools.gateway import Admission, Interceptor
from ..config import EdgeConfig
from ..errors import ConfigError
from ..store.base import EdgeStore
from .approvals import PolicyAdmission, local_approvals_allowed
from .guards import Breakers, RateLimits
from .hubpolicy import HubPolicy
from .pii import Scrubber
from .policy import PolicyEngine
from .sandbox import BwrapSandbox, HostRunner, Limits, SandboxUnavailable
from .stuck import StuckMonitor, StuckSettings
from .vault import VaultKey

log = logging.getLogger("edgehub.edge.safety")


@dataclass(frozen=True, slots=True)
class Safety:
    """The safety components a daemon plugs into its gateway, loop and store."""

    policy: PolicyEngine
    hub_policy: HubPolicy
    """The policy bundles the hub pushed (loaded by the daemon: ``HubPolicy.load``)."""
    admissions: list[Admission]
    interceptors: list[Interceptor]
    sandbox: CommandRunner | None
    sandbox_problem: str
    monitor: StuckMonitor


def build_scrubber(cfg: EdgeConfig) -> Scrubber | None:
    if not cfg.safety.pii_masking:
        return None
    return Scrubber(VaultKey.load_or_create(cfg.vault_key_path), phone_region=cfg.safety.phone_region)


def build_sandbox(cfg: EdgeConfig, *, config_path: Path | None = None) -> tuple[CommandRunner | None, str]:
    sb = cfg.sandbox
    if sb.mode == "off":
        log.warning('the sandbox is OFF ([sandbox] mode = "off"): commands run on the host')
        return HostRunner(), ""
    hide = (cfg.device.data_dir, *sb.hide, *((config_path.parent,) if config_path else ()))
    try:
        return (
            BwrapSandbox(
                Limits(sb.memory_mb, sb.max_pids, sb.cpu_seconds, sb.file_mb),
                hide=tuple(Path(p) for p in hide),
                ro_binds=tuple(sb.ro_binds),
                use_cgroups=sb.cgroups,
            ),
            "",
        )
    except SandboxUnavailable as exc:
        log.error("commands are refused: %s", exc)
        return None, str(exc)


def build_safety(
    cfg: EdgeConfig, store: EdgeStore, *, config_path: Path | None = None, enrolled: bool = False
) -> Safety:
    """The safety layer; ``enrolled``: the device is enrolled with a hub (decisions made on the device
    then count only with ``[safety] local_approvals = "on"``)."""
    s = cfg.safety
    if s.policy is not None and not Path(s.policy).exists():
        raise ConfigError("policy file not found", key="safety.policy", path=str(s.policy))
    policy = PolicyEngine(s.policy)
    sandbox, problem = build_sandbox(cfg, config_path=config_path)
    hub_policy = HubPolicy(policy, cfg.device.data_dir / "policy", cfg.device.id, enabled=s.fleet_policy)
    return Safety(
        policy=policy,
        hub_policy=hub_policy,
        admissions=[
            PolicyAdmission(policy, store, local_ok=local_approvals_allowed(s.local_approvals, enrolled)),
            RateLimits(s.tool_rate_per_minute, s.rate_per_minute),
        ],
        interceptors=[Breakers(s.breaker_failures, s.breaker_reset_s)],
        sandbox=sandbox,
        sandbox_problem=problem,
        monitor=StuckMonitor(
            StuckSettings(
                s.stuck_similarity,
                s.stuck_steps,
                s.failing_repeats,
                s.stuck_warnings,
                s.same_calls,
                s.refuse_repeats,
            )
        ),
    )
