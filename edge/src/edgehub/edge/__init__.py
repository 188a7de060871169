"""The edgehub edge daemon: ReAct agents on a local llama.cpp model with durable state on the device."""

from .app import EdgeDaemon
from .config import EdgeConfig, load_config
from .errors import EdgeError

__all__ = ["EdgeConfig", "EdgeDaemon", "EdgeError", "load_config"]
