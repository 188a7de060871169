"""Hardware profiles: device classes as data (``profiles/*.toml``), detection of this machine, and the
runtime settings a matched profile implies.

    machine = detect()                          # facts from /proc and /sys
    profile = match(machine, load_profiles())   # the most specific profile that fits
    settings = derive(machine, profile)         # threads, context, model limits, sandbox memory, ...

A library: it reads no environment variables and imports no other edgehub member, so the edge, the hub's
planner and Ansible's fact gathering can all use it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .errors import HardwareError, NoMatchingProfile, ProfileError
    from .machine import Accelerator, Disk, Machine, StorageClass, detect
    from .matching import match, mismatches, ranked, specificity
    from .profile import (
        BUILTIN_PROFILES,
        Match,
        ModelFit,
        Profile,
        Runtime,
        SandboxLimits,
        SnapshotPlan,
        load_profile,
        load_profiles,
        profile_schema,
    )
    from .settings import Settings, derive

_WHERE = {
    "HardwareError": ".errors",
    "NoMatchingProfile": ".errors",
    "ProfileError": ".errors",
    "Accelerator": ".machine",
    "Disk": ".machine",
    "Machine": ".machine",
    "StorageClass": ".machine",
    "detect": ".machine",
    "match": ".matching",
    "mismatches": ".matching",
    "ranked": ".matching",
    "specificity": ".matching",
    "BUILTIN_PROFILES": ".profile",
    "Match": ".profile",
    "ModelFit": ".profile",
    "Profile": ".profile",
    "Runtime": ".profile",
    "SandboxLimits": ".profile",
    "SnapshotPlan": ".profile",
    "load_profile": ".profile",
    "load_profiles": ".profile",
    "profile_schema": ".profile",
    "Settings": ".settings",
    "derive": ".settings",
}
"""Where each public name lives, imported on first use: the ``edgehub`` CLI imports this package for its
area descriptor (``areas.py``), and ``edgehub --help`` must not load pydantic for it."""


def this_machine() -> Settings:
    """What ``edgehub hardware detect`` prints: the settings the built-in profile that best matches
    this machine implies (``HardwareError`` when no profile can be read or matched)."""
    from .machine import detect
    from .matching import match
    from .profile import load_profiles
    from .settings import derive

    machine = detect()
    return derive(machine, match(machine, load_profiles()))


__all__ = [
    "BUILTIN_PROFILES",
    "Accelerator",
    "Disk",
    "HardwareError",
    "Machine",
    "Match",
    "ModelFit",
    "NoMatchingProfile",
    "Profile",
    "ProfileError",
    "Runtime",
    "SandboxLimits",
    "Settings",
    "SnapshotPlan",
    "StorageClass",
    "derive",
    "detect",
    "load_profile",
    "load_profiles",
    "match",
    "mismatches",
    "profile_schema",
    "ranked",
    "specificity",
    "this_machine",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
