"""The edgehub hub daemon: applies edge events to the fleet registry (issue 4 grows it into the
management API, planner and L4 graph)."""

from .app import HubDaemon
from .config import HubConfig, load_config
from .errors import HubConfigError, HubError
from .fleet.registry import AgentRegistry, DeviceRegistry

__all__ = [
    "AgentRegistry",
    "DeviceRegistry",
    "HubConfig",
    "HubConfigError",
    "HubDaemon",
    "HubError",
    "load_config",
]
