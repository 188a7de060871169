"""The ``edgehub`` command line. Areas (edge, agent, hub, ...) plug in through entry points."""

from .main import app, main

__all__ = ["app", "main"]
