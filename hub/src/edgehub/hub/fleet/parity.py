"""The parity gate of a rollout (issue 21 part 3), as pure functions over the rollout's record: how far
a shadow model's proposal is from the running model's, how a wave's window decides, how devices split
into waves. ``rollouts.py`` applies them to the stored record and sends what they decide.

Divergence of one step, in [0, 1]:

- 1.0 when the shadow proposal is unusable (``shadow_error``: it did not parse) or names another tool;
- otherwise ``ARGS_WEIGHT * args + THOUGHT_WEIGHT * thought``, where ``args`` is the share of argument
  names whose values differ (1 - |same name and value| / |names in either|; 0 when both have none) and
  ``thought`` is the cosine distance of the two thoughts' embeddings by the edge's L3 embedder
  (all-MiniLM-L6-v2, L2-normalised: ``1 - a.b``, clipped to [0, 1]). Without both embeddings, the
  thoughts count 0 when their texts are equal and 1 otherwise.

A wave decides on its first ``window`` shadow steps: promoted when their mean divergence is at most
the threshold, halted when above. It halts early once the sum it has is above ``threshold * window``
(no remaining step could bring the mean back within it).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence

from edgehub.protocol.v1 import models_pb2

ARGS_WEIGHT = 0.5
THOUGHT_WEIGHT = 0.5
EXAMPLES = 5
"""The most divergent steps a wave keeps."""
MAX_EXAMPLE_CHARS = 400
"""Characters of each thought and argument text an example keeps."""
_WAVE = re.compile(r"^(all|[1-9][0-9]{0,5}|[1-9][0-9]?%|100%)$")


class BadWaves(ValueError):
    """A waves spec that is not comma-separated counts, percentages or ``all``."""


def _args(text: str) -> dict[str, str]:
    """Argument name -> canonical JSON of its value ({} when the text is not a JSON object)."""
    try:
        data = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): json.dumps(v, sort_keys=True) for k, v in data.items()}


def args_distance(a: str, b: str) -> float:
    left, right = _args(a), _args(b)
    names = left.keys() | right.keys()
    if not names:
        return 0.0
    same = sum(1 for n in names if n in left and n in right and left[n] == right[n])
    return 1.0 - same / len(names)


def thought_distance(step: models_pb2.ShadowStep) -> float:
    a, b = step.current_embedding, step.shadow_embedding
    if len(a) == 0 or len(a) != len(b):
        return 0.0 if step.current_thought == step.shadow_thought else 1.0
    cosine = math.fsum(x * y for x, y in zip(a, b, strict=True))
    return min(1.0, max(0.0, 1.0 - cosine))


def divergence(step: models_pb2.ShadowStep) -> float:
    """How far the shadow proposal is from the executed one (see the module docstring)."""
    if step.shadow_error or step.shadow_tool != step.current_tool:
        return 1.0
    return ARGS_WEIGHT * args_distance(
        step.current_args, step.shadow_args
    ) + THOUGHT_WEIGHT * thought_distance(step)


def example(
    device_id: str, agent_id: str, step: models_pb2.ShadowStep, score: float
) -> models_pb2.RolloutExample:
    cut = MAX_EXAMPLE_CHARS
    return models_pb2.RolloutExample(
        device_id=device_id, agent_id=agent_id, step=step.step, divergence=score,
        current_tool=step.current_tool[:cut], current_args=step.current_args[:cut],
        current_thought=step.current_thought[:cut], shadow_tool=step.shadow_tool[:cut],
        shadow_args=step.shadow_args[:cut], shadow_thought=step.shadow_thought[:cut],
        shadow_error=step.shadow_error[:cut],
    )  # fmt: skip


def count(wave: models_pb2.RolloutWave, ex: models_pb2.RolloutExample) -> None:
    """Add one compared step to ``wave`` (its mean, and its examples if among the most divergent)."""
    wave.steps += 1
    wave.divergence_sum += ex.divergence
    wave.divergence = wave.divergence_sum / wave.steps
    kept = sorted([*wave.examples, ex], key=lambda e: -e.divergence)[:EXAMPLES]
    del wave.examples[:]
    wave.examples.extend(kept)


def verdict(wave: models_pb2.RolloutWave, window: int, threshold: float) -> str:
    """``halt``, ``promote`` or '' (undecided yet) for a wave in shadow."""
    if wave.divergence_sum > threshold * window:
        return "halt"
    if wave.steps < window:
        return ""
    return "halt" if wave.divergence > threshold else "promote"


def plan_waves(devices: Sequence[str], spec: str) -> list[list[str]]:
    """Split ``devices`` (in order) into waves by ``spec``: each item the cumulative extent after its
    wave, a count (``1``), a share (``50%``, rounded up) or ``all``; a wave that adds no device is
    dropped and devices left after the last item form a last wave. BadWaves when ``spec`` is not one."""
    items = [p.strip() for p in (spec or "all").split(",")]
    if not all(_WAVE.match(p) for p in items):
        raise BadWaves(f"waves {spec!r}: give comma-separated counts (1), percentages (50%) or all")
    waves: list[list[str]] = []
    done = 0
    for item in items:
        if item == "all":
            upto = len(devices)
        elif item.endswith("%"):
            upto = math.ceil(len(devices) * int(item[:-1]) / 100)
        else:
            upto = int(item)
        upto = min(upto, len(devices))
        if upto > done:
            waves.append(list(devices[done:upto]))
            done = upto
    if done < len(devices):
        waves.append(list(devices[done:]))
    return waves
