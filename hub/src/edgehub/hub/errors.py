"""Errors of the hub member.

HubError
├── HubConfigError   a bad config file or environment override (the message names the key)
└── KnowledgeError   the L4 knowledge graph (its subtree in knowledge/errors.py)
"""

from __future__ import annotations


class HubError(Exception):
    """Root of the hub's errors."""


class HubConfigError(HubError):
    pass
