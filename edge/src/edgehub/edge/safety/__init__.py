"""The edge safety layer: the model suggests, the platform decides.

Policy (``policy``) and rate limits (``guards``) admit or refuse each call at the execution gateway; a
command is judged on its parsed effects (``shell`` parses, ``effects`` classifies with ``commands``);
needs-approval pauses the agent (``approvals``); commands run in a bubblewrap sandbox with cgroup
limits (``sandbox``, ``cgroups``); circuit breakers wrap each tool run (``guards``); the stuck-loop
monitor (``stuck``) watches each step; PII is masked in everything that leaves the device (``pii``,
``vault``). ``build`` wires them from the config.
"""

from .approvals import ApprovalError, Approver, PolicyAdmission, decide, local_approvals_allowed
from .build import Safety, build_safety
from .effects import CommandAnalysis, CommandEffects, analyse
from .guards import Breakers, RateLimits
from .pii import Scrubber, unmask
from .policy import Policy, PolicyEngine, Verdict
from .sandbox import BwrapSandbox, HostRunner, Limits, SandboxUnavailable
from .stuck import HashingEmbedder, StuckMonitor, StuckSettings
from .vault import VaultError, VaultKey

__all__ = [
    "ApprovalError",
    "Approver",
    "Breakers",
    "BwrapSandbox",
    "CommandAnalysis",
    "CommandEffects",
    "HashingEmbedder",
    "HostRunner",
    "Limits",
    "Policy",
    "PolicyAdmission",
    "PolicyEngine",
    "RateLimits",
    "Safety",
    "SandboxUnavailable",
    "Scrubber",
    "StuckMonitor",
    "StuckSettings",
    "VaultError",
    "VaultKey",
    "Verdict",
    "analyse",
    "build_safety",
    "decide",
    "local_approvals_allowed",
    "unmask",
]
