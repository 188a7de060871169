"""Stuck-loop monitor: an agent repeating itself is refused, told to re-plan, then stopped.

Its state is kept in ``AgentState.guard`` (checkpointed with every step), so a restart resets nothing.
Signals, in the order they are judged:

- a repeated call of a tool that is not repeatable (``ToolSpec.repeatable`` false: commands, notes):
  the same tool with the same arguments (canonical JSON) as a call that already ran is refused before
  it runs (``refusal``), with what the first run returned, unless the agent's thought says why it must
  run again (``gives_reason``: "again ... because ..."); a refused repeat is a stuck signal at once
  (``refuse_repeats``, on by default: off, such a repeat runs and only counts toward ``same_calls``);
- the same call (tool + canonical arguments) succeeding ``same_calls`` times in the agent's life, any
  tool (reads and lookups included; repeats run with a reason too);
- near-identical consecutive thoughts: cosine similarity of their embeddings at or above
  ``similarity``, ``similar_steps`` thoughts in a row;
- the same failing call (tool + arguments, or the same invalid action) ``failing_repeats`` times in
  a row.

The first ``max_warnings`` times any fires, the agent gets a warning in its prompt (kept there until
it does something different), and when a repeated call fired, its tool is withheld from the next
step's grammar (``Guard.excluded_tool``, one step; ``finish`` never); after that it is stopped with
the reason in its trace.

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

from ..agent.base import Refusal, SeenStep
from ..agent.base import StepVerdict as Verdict
from ..agent.stops import STUCK

S = agent_pb2
DIMS = 512
_WORDS = re.compile(r"[^\W_]+")
MAX_CALLS = 64
"""Distinct calls a guard remembers (the least recently made are forgotten first)."""
OUTPUT_CHARS = 200
"""How much of a call's output the guard keeps for the refusal of its repeat."""
_AGAIN = re.compile(r"\b(again|re-?run|retry|repeat|once more|second time)\b", re.IGNORECASE)
_BECAUSE = re.compile(r"\b(because|since|as the|so that)\b", re.IGNORECASE)


def gives_reason(thought: str) -> bool:
    """The thought says the call runs again on purpose, and why ("run it again because the first
    attempt was before the file existed")."""
    return bool(_AGAIN.search(thought) and _BECAUSE.search(thought))


def find_call(guard: agent_pb2.Guard, call: str) -> agent_pb2.CallCount | None:
    return next((c for c in guard.calls if c.call == call), None)


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
    same_calls: int = 4
    refuse_repeats: bool = True
    """Refuse a repeat of a non-repeatable call (``refusal``); False: it runs, and counts like any call."""


class StuckMonitor:
    """Updates an agent's guard after each step and says whether to warn or stop it (the loop's
    ``StepMonitor``)."""

    def __init__(self, settings: StuckSettings = StuckSettings(), embedder: Embedder | None = None) -> None:
        self.s = settings
        self.embedder = embedder or HashingEmbedder()

    def similarity(self, a: str, b: str) -> float:
        return float(np.dot(self.embedder.embed(a), self.embedder.embed(b)))

    def refusal(
        self, guard: agent_pb2.Guard, tool: str, call: str, *, repeatable: bool, thought: str
    ) -> Refusal | None:
        """Why ``call`` must not run now, or None (see the module docstring)."""
        made = find_call(guard, call)
        refuse = self.s.refuse_repeats and not repeatable
        if refuse and made is not None and made.ran and not gives_reason(thought):
            outcome = "returned" if made.ok else "failed with"
            return Refusal(
                "repeated",
                f"you already ran this exact call at step {made.ran_step + 1}, so it was not run again "
                f"(its effect would repeat). It {outcome}: {made.output!r}. Use that result, do something "
                "else, or finish; if it truly must run again, say why in your thought (again, because ...).",
            )
        if tool and tool == guard.excluded_tool:
            return Refusal(
                "withheld",
                f"{tool} is withheld for this step after the platform's warning; use another tool or finish.",
            )
        return None

    def observe(self, guard: agent_pb2.Guard, step: SeenStep) -> Verdict:
        g = S.Guard()
        g.CopyFrom(guard)
        g.excluded_tool = g.excluded_call = ""  # a tool is withheld for one step only
        thought, call = step.thought, step.call
        similar = (
            bool(g.last_thought and thought) and self.similarity(thought, g.last_thought) >= self.s.similarity
        )
        g.similar_run = g.similar_run + 1 if similar else 0
        g.last_thought = thought
        if step.failed:
            g.failing_run = g.failing_run + 1 if call == g.failing_call else 1
            g.failing_call = call
        else:
            g.failing_run, g.failing_call = 0, ""
        made = self._count(g, step)
        repeat = self._repeat(step, made)
        reason = repeat or self._reason(g)
        if not reason:
            if not similar and g.failing_run <= 1:
                g.warning = ""  # the agent did something different: the warning has done its job
            return Verdict("ok", "", g)
        if g.warnings >= self.s.max_warnings:
            return Verdict("stop", f"{STUCK}{reason}, and it persisted after {g.warnings} warning(s)", g)
        g.warnings += 1
        g.similar_run = g.failing_run = 0
        withheld = ""
        if repeat and step.tool and step.tool != "finish":
            g.excluded_tool, g.excluded_call = step.tool, call
            withheld = f" {step.tool} is not offered in your next step."
        g.warning = (
            f"You are stuck: {reason}. Do not repeat it.{withheld} Think of a different approach, use a "
            "different tool or different arguments, or finish with what you know."
        )
        return Verdict("warn", reason, g)

    def _count(self, g: agent_pb2.Guard, step: SeenStep) -> agent_pb2.CallCount | None:
        """Count the step's call in the guard (when it ran or was refused as a repeat); its entry."""
        if not (step.ran or step.refused) or not step.tool or step.tool == "finish":
            return None  # finish has the finish check; a call refused by policy or limits never ran
        made = find_call(g, step.call)
        if step.refused and (made is None or not made.ran):
            return None  # a withheld tool's new call: refused, but nothing was repeated
        entry = S.CallCount(call=step.call)
        if made is not None:
            entry.CopyFrom(made)
            g.calls.remove(made)
        entry.count += 1
        if step.ran:
            entry.ran, entry.ran_step, entry.ok = True, step.number, not step.failed
            entry.output = step.output[:OUTPUT_CHARS]
        g.calls.append(entry)  # most recently made last
        if len(g.calls) > MAX_CALLS:
            del g.calls[0]
        return entry

    def _repeat(self, step: SeenStep, made: agent_pb2.CallCount | None) -> str:
        if made is None:
            return ""
        if step.refused:
            return f"repeated a call that already ran ({made.call[:80]}; made {made.count} times)"
        if step.ran and not step.failed and made.count >= self.s.same_calls:
            return f"the same call {made.count} times ({made.call[:80]})"
        return ""

    def _reason(self, g: agent_pb2.Guard) -> str:
        if g.similar_run >= self.s.similar_steps - 1:
            return f"{self.s.similar_steps} near-identical thoughts in a row"
        if g.failing_run >= self.s.failing_repeats:
            return f"the same failing call {g.failing_run} times in a row ({g.failing_call[:80]})"
        return ""
