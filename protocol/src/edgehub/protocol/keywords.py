"""What "data locality" compares, shared by both sides so they cut text into words alike: an edge
reports the words its L3 memories are most about (``memories`` in its twin), and the hub's planner
prefers, for a task, a device whose memories share words with the task's goal."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

STOP = frozenset(
    {
        "the", "and", "for", "with", "from", "into", "that", "this", "all", "any", "its", "was", "are",
        "then", "back", "what", "says", "step", "tool", "file", "finish", "answer", "goal", "agent",
    }
)  # fmt: skip
"""Words too common (in goals, or in every agent's steps) to say where data is."""


def words(text: str) -> frozenset[str]:
    """Lower-case words of three letters or more, common ones aside."""
    return frozenset(w for w in re.findall(r"[^\W_]+", text.lower()) if len(w) >= 3) - STOP


def keywords(texts: Iterable[str], limit: int = 50) -> list[str]:
    """The ``limit`` words that occur in most of ``texts`` (each text counts a word once), most first;
    ties in alphabetical order."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(words(text))
    return [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]]
