"""The ``edgehub`` command line. Areas (edge, agent, hub, ...) plug in through entry points.

The root command is ``edgehub.cli.main`` (imported on demand: mounting the areas imports every member,
so the daemons' own imports of ``edgehub.cli.config`` and ``edgehub.cli.common`` must not trigger it)."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["app", "main"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module(f"{__name__}.main"), name)
    raise AttributeError(name)
