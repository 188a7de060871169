"""Which profile fits a machine: every criterion must hold, and the most specific profile wins.

Specificity is ordered first by whether a profile names the product (``device_model`` or ``cpu_model``),
then by how many criteria it gives: a profile for "Raspberry Pi 5" beats one for "any aarch64 board with
4 cores and 4 GB", which beats the generic fallback with no criteria at all. Ties go to the name that sorts
first, so the choice never depends on the order files were read in.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

from .errors import NoMatchingProfile
from .machine import Machine
from .profile import Match, Profile


def mismatches(machine: Machine, criteria: Match) -> list[str]:
    """What about ``machine`` fails ``criteria``, in words; empty when it matches."""
    why: list[str] = []
    _any_of(why, "arch", machine.arch, criteria.arch)
    _any_of(why, "cpu_vendor", machine.cpu_vendor, criteria.cpu_vendor)
    _any_of(why, "cpu_model", machine.cpu_model, criteria.cpu_model)
    _any_of(why, "device_model", machine.device_model, criteria.device_model)
    _any_of(why, "storage", machine.storage, criteria.storage)
    missing_flags = [f for f in criteria.cpu_flags if f not in machine.cpu_flags]
    if missing_flags:
        why.append(f"cpu_flags lacks {', '.join(missing_flags)}")
    missing_acc = [a for a in criteria.accelerators if a not in machine.accelerators]
    if missing_acc:
        why.append(f"no {', '.join(missing_acc)}")
    _within(why, "cores", machine.cores, criteria.min_cores, criteria.max_cores)
    _within(why, "memory_mb", machine.memory_mb, criteria.min_memory_mb, criteria.max_memory_mb)
    return why


def specificity(profile: Profile) -> tuple[bool, int]:
    """Larger is more specific (see the module docstring)."""
    return profile.match.names_product, profile.match.criteria


def ranked(machine: Machine, profiles: Iterable[Profile]) -> list[Profile]:
    """The profiles that match ``machine``, most specific first."""
    fitting = [p for p in profiles if not mismatches(machine, p.match)]
    return sorted(fitting, key=lambda p: (tuple(-int(x) for x in specificity(p)), p.name))


def match(machine: Machine, profiles: Sequence[Profile]) -> Profile:
    """The most specific profile that matches; NoMatchingProfile says why each one did not."""
    fitting = ranked(machine, profiles)
    if not fitting:
        raise NoMatchingProfile({p.name: mismatches(machine, p.match) for p in profiles})
    return fitting[0]


def _any_of(why: list[str], name: str, value: str, patterns: Sequence[str]) -> None:
    if patterns and not any(fnmatch.fnmatchcase(value.lower(), p.lower()) for p in patterns):
        why.append(f"{name} {value or 'unknown'!r} is not {' or '.join(patterns)}")


def _within(why: list[str], name: str, value: int, low: int | None, high: int | None) -> None:
    if low is not None and value < low:
        why.append(f"{name} {value} < {low}")
    if high is not None and value > high:
        why.append(f"{name} {value} > {high}")
