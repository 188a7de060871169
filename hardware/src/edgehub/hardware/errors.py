"""Errors raised by the hardware package.

    HardwareError            under the one root (``edgehub.protocol.errors.EdgehubError``)
    ├── ProfileError         a profile file (or folder) cannot be used (``path``, ``field``, ``reason``)
    └── NoMatchingProfile    no profile fits the machine (``reasons``: profile name -> what did not fit)

Detection itself raises nothing: a fact the machine does not expose (no device tree on x86, /sys hidden in
a container) is reported as unknown, because a half-known machine still deserves the generic profile.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from edgehub.protocol.errors import EdgehubError, ErrorCode


class HardwareError(EdgehubError):
    """Root of every error the hardware package raises on purpose."""

    code = ErrorCode.FAILED_PRECONDITION


class ProfileError(HardwareError):
    """A profile file is missing, not TOML, or does not fit the schema."""

    code = ErrorCode.INVALID_ARGUMENT

    def __init__(self, path: Path | str, reason: str, *, field: str | None = None) -> None:
        self.path = Path(path)
        self.reason = reason
        """What is wrong, without the path or field."""
        self.field = field
        """Dotted key of the offending setting (``runtime.threads``), None for whole-file problems."""
        where = f"{field}: " if field else ""
        super().__init__(f"profile {self.path}: {where}{reason}")


class NoMatchingProfile(HardwareError):
    """No loaded profile matches; only possible when the generic fallback was replaced or left out."""

    def __init__(self, reasons: Mapping[str, list[str]]) -> None:
        self.reasons = dict(reasons)
        why = "; ".join(f"{name}: {', '.join(r)}" for name, r in sorted(self.reasons.items()))
        super().__init__(f"no hardware profile matches this machine ({why or 'no profiles loaded'})")
