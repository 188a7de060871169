"""This member's area of the ``edgehub`` CLI, described without importing it (``edgehub.cli.area``): the
``edgehub.cli`` entry point names it, and the app takes its help from here."""

from __future__ import annotations

from edgehub.cli.area import Area

HARDWARE = Area(
    "Hardware profiles: detect this machine, match a profile, derive runtime settings.",
    "edgehub.hardware.cli:hardware_app",
)
