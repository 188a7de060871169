"""Stuck-loop monitor: an agent repeating itself is told to re-plan, then stopped.

Two signals, both kept in ``AgentState.guard`` so a restart does not reset them:

- near-identical consecutive thoughts: cosine similarity of their embeddings at or above
  ``similarity``, ``similar_steps`` thoughts in a row;
- the same failing call (tool + arguments, or the same invalid action) ``failing_repeats`` times in
  a row.

The first ``max_warnings`` times either fires, the agent gets a warning in its prompt (kept there
until it does something different); after that it is stopped with the reason in its trace.

Embeddings: ``HashingEmbedder`` embeds character 3-grams by feature hashing (no model, ~20 us per
thought). Near-identical thoughts are near-identical strings, which is what this catches; a learned
embedder (the L3 memory's) can be passed instead through the ``Embedder`` protocol.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edgehub.protocol.v1 import agent_pb2

from ..agent.base import StepVerdict as Verdict

S = agent_pb2
DIMS = 512
_WORDS = re.compile(r"[^\W_]+")


class Embedder(Protocol):
    def embed(self, text: str) -> np.ndarray:
        """A unit-norm vector (all zeros for empty text)."""
        ...


class HashingEmbedder:
    """Character 3-gram feature hashing into ``DIMS`` dimensions."""

    def embed(self, text: str) -> np.ndarray:
        vec = np.zeros(DIMS, dtype=np.float32)
        t = f"  {' '.join(_WORDS.findall(text.lower()))}  "  # punctuation and spacing do not count
        for i in range(len(t) - 2):
            h = zlib.crc32(t[i : i + 3].encode())
            vec[h % DIMS] += 1.0 if h & 0x80000000 else -1.0
        norm = float(np.linalg.norm(vec))
        return vec / norm if norm else vec


@dataclass(frozen=True, slots=True)
class StuckSettings:
    similarity: float = 0.95
    similar_steps: int = 5
    failing_repeats: int = 3
    max_warnings: int = 1


class StuckMonitor:
    """Updates an agent's guard after each step and says whether to warn or stop it (the loop's
    ``StepMonitor``)."""

    def __init__(self, settings: StuckSettings = StuckSettings(), embedder: Embedder | None = None) -> None:
        self.s = settings
        self.embedder = embedder or HashingEmbedder()

    def similarity(self, a: str, b: str) -> float:
        return float(np.dot(self.embedder.embed(a), self.embedder.embed(b)))

    def observe(self, guard: agent_pb2.Guard, thought: str, call: str, failed: bool) -> Verdict:
        g = S.Guard()
        g.CopyFrom(guard)
        similar = (
            bool(g.last_thought and thought) and self.similarity(thought, g.last_thought) >= self.s.similarity
        )
        g.similar_run = g.similar_run + 1 if similar else 0
        g.last_thought = thought
        if failed:
            g.failing_run = g.failing_run + 1 if call == g.failing_call else 1
            g.failing_call = call
        else:
            g.failing_run, g.failing_call = 0, ""
        reason = self._reason(g)
        if not reason:
            if not similar and g.failing_run <= 1:
                g.warning = ""  # the agent did something different: the warning has done its job
            return Verdict("ok", "", g)
        if g.warnings >= self.s.max_warnings:
            return Verdict("stop", f"stuck: {reason}, and it persisted after {g.warnings} warning(s)", g)
        g.warnings += 1
        g.similar_run = g.failing_run = 0
        g.warning = (
            f"You are stuck: {reason}. Do not repeat it. Think of a different approach, use a different "
            "tool or different arguments, or finish with what you know."
        )
        return Verdict("warn", reason, g)

    def _reason(self, g: agent_pb2.Guard) -> str:
        if g.similar_run >= self.s.similar_steps - 1:
            return f"{self.s.similar_steps} near-identical thoughts in a row"
        if g.failing_run >= self.s.failing_repeats:
            return f"the same failing call {g.failing_run} times in a row ({g.failing_call[:80]})"
        return ""
