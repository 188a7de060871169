"""The edgehub hub daemon: the fleet registry, the management API, the planner and the L4 knowledge
graph (the map of its folders: README.md beside this member's pyproject.toml)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import HubDaemon
    from .config import HubConfig, load_config
    from .errors import HubConfigError, HubError
    from .fleet.agents import AgentRegistry
    from .fleet.devices import DeviceRegistry

_WHERE = {
    "HubDaemon": ".app",
    "HubConfig": ".config",
    "load_config": ".config",
    "HubConfigError": ".errors",
    "HubError": ".errors",
    "AgentRegistry": ".fleet.agents",
    "DeviceRegistry": ".fleet.devices",
}
"""Where each public name lives, imported on first use: importing any ``edgehub.hub`` module (the CLI's
area descriptors, say) must not import the daemon."""

__all__ = [
    "AgentRegistry",
    "DeviceRegistry",
    "HubConfig",
    "HubConfigError",
    "HubDaemon",
    "HubError",
    "load_config",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
