"""Turning one cluster of episodes into candidate facts with the brain, and checking what it wrote.

The prompt is a plain document to continue (what small base models do best, as in the edge's
compaction): an instruction line, one worked example, the cluster's episodes as notes, then
``Facts:``. The output is grammar-constrained to ``SCHEMA`` (``Brain.complete(json_schema=...)``,
the same mechanism as the edge agent's actions), so it is always JSON of the right shape; what it
*says* is checked here before anything reaches the graph:

- a name must be 1..120 characters and occur in the cluster's episodes (case and punctuation aside),
  and so must a text or number value: a small model copies the worked examples or invents things,
  and an ungrounded name or value is how it shows;
- the predicate is lower-cased with spaces and dashes made underscores, then must be lower_snake_case;
- exactly one of ``object`` (another name) and ``value`` (a literal); a subject is not its own object;
- at most ``max_facts`` per cluster, no repeats.

Every dropped fact is reported with its reason. An answer cut at ``max_tokens`` (a small model can
repeat one fact until then) keeps its complete facts. The header with the worked examples is the same
for every cluster, so the brain's prefix reuse evaluates only each cluster's notes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edgehub.llm import Brain, Completion

from .clusters import Cluster
from .errors import InvalidKnowledge
from .model import EpisodeRecord, Value, validate_predicate, validate_value

MAX_NAME = 120
MAX_NOTE = 600
"""Characters of one episode shown to the model (the edges already cap episodes at 600)."""

_FACT = {
    "type": "object",
    "properties": {
        "subject": {"type": "string", "minLength": 1, "maxLength": MAX_NAME},
        "predicate": {"type": "string", "minLength": 1, "maxLength": 64},
        "object": {"type": "string", "minLength": 1, "maxLength": MAX_NAME},
    },
    "required": ["subject", "predicate", "object"],
    "additionalProperties": False,
}
_LITERAL = {
    "type": "object",
    "properties": {
        "subject": {"type": "string", "minLength": 1, "maxLength": MAX_NAME},
        "predicate": {"type": "string", "minLength": 1, "maxLength": 64},
        "value": {"type": ["string", "number", "boolean"]},
    },
    "required": ["subject", "predicate", "value"],
    "additionalProperties": False,
}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"facts": {"type": "array", "items": {"anyOf": [_FACT, _LITERAL]}, "maxItems": 8}},
    "required": ["facts"],
    "additionalProperties": False,
}

# Two worked examples of different shapes: with one, Gemma 3 270M copied it into most answers
# ("Robot R-1 located_in hall 5" for notes about cameras); with none, it wrote subject = predicate =
# object over and over. Measured on the recall set's clusters (docs/knowledge.md).
HEADER = (
    "# Facts from field notes\n"
    "Each fact has a subject, a predicate in lower_snake_case, and an object (another thing) or a value."
    " Names are copied from the notes.\n\n"
    "Notes:\n"
    "- Valve V-9 in building B leaks oil.\n"
    "- Fixed the oil leak on valve V-9 in building B.\n"
    'Facts: {"facts": [{"subject": "Valve V-9", "predicate": "located_in", "object": "building B"}, '
    '{"subject": "Valve V-9", "predicate": "had_problem", "value": "oil leak"}]}\n\n'
    "Notes:\n"
    "- The oven O-1 reaches 200 C in 20 minutes.\n"
    "- Oven O-1 heating time is 20 minutes.\n"
    'Facts: {"facts": [{"subject": "Oven O-1", "predicate": "heating_time", "value": "20 minutes"}]}\n\n'
)


@dataclass(frozen=True, slots=True)
class Statement:
    """A fact the model stated, checked, with names not yet resolved to entities."""

    subject: str
    predicate: str
    object: str | None = None
    """A name (a relation), or None with a value."""
    value: Value | None = None


@dataclass(frozen=True, slots=True)
class Abstraction:
    """What the model made of one cluster."""

    episodes: tuple[EpisodeRecord, ...]
    """The episodes it was shown (those that fitted the context; the centre always does)."""
    statements: tuple[Statement, ...]
    rejected: tuple[str, ...]
    """Why each dropped fact was dropped (or why the whole answer was)."""
    completion: Completion | None


def normal(text: str) -> str:
    """Lower-case words (letters and digits, any script) separated by single spaces: how names are
    compared."""
    return " ".join(re.findall(r"[^\W_]+", text.lower()))


def slug(name: str) -> str:
    """An entity id for a name: lower-case words joined by dashes (``Pump P-3`` -> ``pump-p-3``)."""
    return normal(name).replace(" ", "-")


def notes(episodes: Sequence[EpisodeRecord]) -> str:
    return "".join(f"- {' '.join(e.text.split())[:MAX_NOTE]}\n" for e in episodes)


def prompt(episodes: Sequence[EpisodeRecord]) -> str:
    return f"{HEADER}Notes:\n{notes(episodes)}Facts: "


def fit(brain: Brain, cluster: Cluster, max_tokens: int) -> tuple[EpisodeRecord, ...]:
    """The cluster's episodes that fit the context with ``max_tokens`` to generate: the least similar
    to the centre are left out first (they stay pending)."""
    episodes = cluster.episodes
    while len(episodes) > 1 and brain.count_tokens(prompt(episodes)) + max_tokens + 1 > brain.n_ctx:
        episodes = episodes[:-1]
    return episodes


def abstract(brain: Brain, cluster: Cluster, *, max_facts: int, max_tokens: int) -> Abstraction:
    """Ask the model for the cluster's facts and check them. Blocking: call through a ``ModelGate``."""
    episodes = fit(brain, cluster, max_tokens)
    completion = brain.complete(prompt(episodes), json_schema=SCHEMA, max_tokens=max_tokens)
    cut = completion.stop_reason == "length"
    statements, rejected = check(completion.text, episodes, max_facts=max_facts, cut=cut)
    if cut:
        rejected.insert(0, f"the answer was cut at {max_tokens} tokens; its complete facts were kept")
    return Abstraction(episodes, tuple(statements), tuple(rejected), completion)


def _items(text: str, cut: bool) -> list[object]:
    """The model's list of facts; for an answer ``cut`` short, the facts it completed."""
    if not cut:
        items = json.loads(text)["facts"]
        if not isinstance(items, list):
            raise TypeError
        return items
    decoder = json.JSONDecoder()
    out: list[object] = []
    at = text.index("[", text.index('"facts"')) + 1
    while True:
        at = len(text) - len(text[at:].lstrip(" \n,"))
        try:
            item, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            return out
        out.append(item)


def check(
    text: str, episodes: Sequence[EpisodeRecord], *, max_facts: int, cut: bool = False
) -> tuple[list[Statement], list[str]]:
    """The statements in the model's answer ``text`` that pass the checks, and a reason per dropped one
    (``cut``: the answer stopped at the token limit; its complete facts are checked)."""
    try:
        items = _items(text, cut)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return [], [f"not a JSON object with a list of facts: {text[:80]!r}"]
    corpus = f" {normal(' '.join(e.text for e in episodes))} "
    statements: list[Statement] = []
    rejected = []
    seen: set[str] = set()
    repeats = 0
    for i, item in enumerate(items):
        raw = json.dumps(item, sort_keys=True)
        if raw in seen:  # a small model can loop on one fact; one line in the report is enough
            repeats += 1
            continue
        seen.add(raw)
        try:
            statement = _statement(item, corpus)
        except InvalidKnowledge as exc:
            rejected.append(f"fact {i + 1}: {exc}")
            continue
        if _key(statement) in {_key(s) for s in statements}:
            rejected.append(f"fact {i + 1}: repeats an earlier one")
        elif len(statements) == max_facts:
            rejected.append(f"fact {i + 1}: more than {max_facts} facts from one cluster")
        else:
            statements.append(statement)
    if repeats:
        rejected.append(f"{repeats} verbatim repeats of earlier facts")
    return statements, rejected


def _key(s: Statement) -> tuple[str, str, str, object]:
    """What a statement says, names compared as ``normal`` does."""
    return normal(s.subject), s.predicate, normal(s.object or ""), s.value


def _name(item: dict[str, Any], key: str, corpus: str) -> str:
    name = item.get(key)
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
        raise InvalidKnowledge(f"must be a name of 1..{MAX_NAME} characters", field=key)
    if not normal(name) or f" {normal(name)} " not in corpus:
        raise InvalidKnowledge(f"{name!r} does not occur in the episodes", field=key)
    return " ".join(name.split())


def _statement(item: object, corpus: str) -> Statement:
    if not isinstance(item, dict):
        raise InvalidKnowledge("not an object")
    subject = _name(item, "subject", corpus)
    raw = item.get("predicate")
    predicate = re.sub(r"[\s-]+", "_", raw.strip().lower()) if isinstance(raw, str) else raw
    validate_predicate(predicate)
    assert isinstance(predicate, str)
    if ("object" in item) == ("value" in item):
        raise InvalidKnowledge("exactly one of object and value", field="object")
    if "object" in item:
        obj = _name(item, "object", corpus)
        if normal(obj) == normal(subject):
            raise InvalidKnowledge("the object is the subject itself", field="object")
        return Statement(subject, predicate, object=obj)
    value = item["value"]
    if isinstance(value, str):
        value = " ".join(value.split())
        if not value:
            raise InvalidKnowledge("must not be empty", field="value")
    validate_value(value)
    if not isinstance(value, bool) and f" {normal(str(value))} " not in corpus:
        raise InvalidKnowledge(f"{value!r} does not occur in the episodes", field="value")
    return Statement(subject, predicate, value=value)
