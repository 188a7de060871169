"""The edgehub edge daemon: ReAct agents on a local llama.cpp model with durable state on the device."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import EdgeDaemon
    from .config import EdgeConfig, load_config
    from .errors import EdgeError

_WHERE = {
    "EdgeDaemon": ".app",
    "EdgeConfig": ".config",
    "load_config": ".config",
    "EdgeError": ".errors",
}
"""Where each public name lives, imported on first use: importing any ``edgehub.edge`` module (the CLI's
area descriptors, say) must not import the daemon."""

__all__ = [
    "EdgeConfig",
    "EdgeDaemon",
    "EdgeError",
    "load_config",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
