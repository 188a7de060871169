"""An area of the ``edgehub`` CLI as its ``edgehub.cli`` entry point names it: the area's one-line help
and where its Typer app lives. ``edgehub --help`` lists every area from these alone, and an area's app
(which imports its daemon: llama.cpp, gRPC, NATS, Neo4j) is imported only when a command line names it.

A member declares its areas in a module that imports nothing heavy (``edgehub.edge.cli.areas``)::

    EDGE = Area("The edge daemon: runs agents on this device.", "edgehub.edge.cli.daemon:edge_app")

and builds the app with the same help: ``typer.Typer(help=EDGE.help, ...)``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import typer


@dataclass(frozen=True, slots=True)
class Area:
    """One ``edgehub <area>`` sub-command, described without importing it."""

    help: str
    """The line ``edgehub --help`` shows beside the area's name (also its app's help)."""
    app: str
    """``package.module:attribute`` of the area's ``typer.Typer``."""

    def load(self) -> typer.Typer:
        """Import the area's app (``ImportError``/``AttributeError`` when it is not there)."""
        module, _, attribute = self.app.partition(":")
        return getattr(importlib.import_module(module), attribute)
