"""Identifiers (device, agent, goal, task, migration ids) and how they become names in NATS.

Ids reach subjects (``subjects.token``), KV keys (``kv_key``) and consumer names; each encoding is
injective so two different ids never share a name. This module is the one home of the rules an id
must satisfy and of the key encoding every record store uses.
"""

from __future__ import annotations

import re

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
"""What an operator may name a device or a hub process in its config: a letter or digit, then up to 63
letters, digits, ``_``, ``.`` or ``-``."""

_KV_KEY = re.compile(r"^[-/_=.a-zA-Z0-9]+$")


def kv_key(id_: str) -> str:
    """``id_`` as a JetStream KV key: itself when it is a valid key, else ``x-`` and its UTF-8 hex."""
    return id_ if _KV_KEY.match(id_) else "x-" + id_.encode().hex()


def id_of_key(key: str) -> str:
    """The id ``kv_key`` made ``key`` from (the inverse: a key read back from a bucket names its id)."""
    if key.startswith("x-"):
        try:
            id_ = bytes.fromhex(key[2:]).decode()
        except ValueError:
            return key
        if kv_key(id_) == key:
            return id_
    return key
