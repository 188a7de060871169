"""The edgehub hub daemon: the fleet registry, the management API, the planner and the L4 knowledge
graph (the map of its folders: README.md beside this member's pyproject.toml)."""

from .app import HubDaemon
from .config import HubConfig, load_config
from .errors import HubConfigError, HubError
from .fleet.agents import AgentRegistry
from .fleet.devices import DeviceRegistry

__all__ = [
    "AgentRegistry",
    "DeviceRegistry",
    "HubConfig",
    "HubConfigError",
    "HubDaemon",
    "HubError",
    "load_config",
]
