"""What both ends of an escalation (an edge step asked of the hub's model, ``EscalateRequest`` /
``EscalateReply`` in ``models.proto``) share: the message version, the cache key, and the bounded
cache of answers each side keeps.

The key is the SHA-256 of everything an answer depends on: the whole prompt, the JSON schema (as
canonical JSON), ``max_tokens`` and the fingerprint of the model that answers. A step whose context
changed in any way (one more observation, another tool withheld from the grammar, a new model on the
hub) has another key, so a stale answer can never be served for it. The edge keys by the hub model
that answered it last (``EscalationClient``); the hub by its own, and never trusts the key a device
sent.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ESCALATION_VERSION = 1
"""``schema_version`` of EscalateRequest / EscalateReply; the hub refuses a version it does not read."""


def context_key(prompt: str, json_schema: str, max_tokens: int, model: str) -> str:
    """SHA-256 (hex) of what an answer to this request depends on (see the module docstring);
    ``json_schema``: canonical JSON text (``schema_text``), empty for free text."""
    h = hashlib.sha256()
    for part in (prompt, json_schema, str(max_tokens), model):
        data = part.encode()
        h.update(len(data).to_bytes(8, "big"))  # length-prefixed: no two splits of one text collide
        h.update(data)
    return h.hexdigest()


def schema_text(schema: Mapping[str, Any] | None) -> str:
    """A schema as canonical JSON text (sorted keys, no spaces): equal schemas give equal keys."""
    return "" if schema is None else json.dumps(schema, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """An answer kept in an escalation cache."""

    text: str
    """The completion (for a schema, the JSON document)."""
    prompt_tokens: int
    completion_tokens: int
    model: str
    """Fingerprint of the model that wrote it."""


class AnswerCache:
    """A least-recently-used map of ``context_key`` -> answer, at most ``size`` entries (0: off), with
    its hit and miss counts."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, CachedAnswer] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> CachedAnswer | None:
        found = self._items.get(key)
        if found is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return found

    def put(self, key: str, answer: CachedAnswer) -> None:
        if self.size <= 0:
            return
        self._items[key] = answer
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def hit_rate(self) -> float:
        """Hits over lookups (0 before the first)."""
        looked = self.hits + self.misses
        return self.hits / looked if looked else 0.0
