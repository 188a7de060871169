"""Goal and dedupe-key templates: ``string.Template`` over the event, nothing more.

``$topic`` or ``${payload.pressure}`` is replaced by that field of the event; a dotted name walks into
JSON objects by key and into lists by index, and never touches an attribute, calls nothing and
evaluates nothing (``string.Template``, not ``str.format``, whose ``{0.__class__}`` reaches attributes).
``$$`` is a literal ``$``. A field the event lacks is an error (the event is counted as a bad payload);
a field holding an object or list is written as its JSON; each value is cut at ``VALUE_CHARS``.
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping
from typing import Any

VALUE_CHARS = 500
"""Longest text one field puts into a goal (a payload cannot flood the agent's context)."""


class TemplateError(ValueError):
    """A template that does not parse, or an event that lacks a field it names."""


class _Dotted(string.Template):
    braceidpattern = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*"


class GoalTemplate:
    """A template checked once (``TemplateError`` when malformed) and filled per event."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._t = _Dotted(text)
        if not self._t.is_valid():
            raise TemplateError(f"template {text!r}: a $ must start $name, ${{dotted.name}} or $$")
        self.fields = tuple(self._t.get_identifiers())

    def fill(self, event: Mapping[str, Any]) -> str:
        """The text with each field taken from ``event``; ``TemplateError`` naming a missing one."""
        return self._t.substitute({name: _text(lookup(event, name)) for name in self.fields})


def lookup(data: Any, path: str) -> Any:
    """The value at dotted ``path`` in JSON-like ``data`` (dict keys, list indexes); ``TemplateError``
    when it is not there."""
    for part in path.split("."):
        if isinstance(data, Mapping) and part in data:
            data = data[part]
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            raise TemplateError(f"the event has no field {path!r}")
    return data


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text[:VALUE_CHARS]
