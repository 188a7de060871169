"""JSON as Python holds it after ``json.loads``: the type of what the model writes (a tool call's
arguments, checked against the tool's schema before any tool sees them), of JSON schemas, of the worker
link's frames and of what the CLI prints with ``--json``."""

from __future__ import annotations

from typing import TypeAlias

JsonValue: TypeAlias = "str | int | float | bool | list[JsonValue] | dict[str, JsonValue] | None"
JsonObject: TypeAlias = "dict[str, JsonValue]"
"""A JSON object."""
