"""Demonstrations: worked examples in the prompt, chosen for the goal.

A small model learns the action format, and which tools fit which kind of goal, from the examples it
is shown far more than from instructions. Showing every example would not fit a small context, and
always the same two taught the 270M base model to copy them (issue 18). So the library in
``demos.toml`` is tagged with the skills each example shows (write, read, run, remember, recall,
answer, knowledge ...) and the prompt gets the examples whose skills best cover the goal's, judged
from its deliverables and a few telling words, ties broken by shared words, within a token budget.
The choice depends only on the goal, so a resumed agent renders the same header, and the header,
fixed for the agent's life, keeps the prompt append-only.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Sequence
from functools import cache
from importlib import resources

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from edgehub.protocol.tasks import INPUTS_HEADER
from edgehub.protocol.v1 import agent_pb2

MAX_DEMOS = 3
_WORD = re.compile(r"[a-z0-9]+")
_CUES = {
    "run": re.compile(r"\b(command|shell|run|execute|count|how many|sort|list|compute|calculate)\b", re.I),
    "remember": re.compile(r"\b(remember|note|memori[sz]e|for later|keep in mind)\b", re.I),
    "recall": re.compile(r"\b(recall|look (?:\w+ )*up)\b", re.I),
    "knowledge": re.compile(r"\b(knowledge|fleet)\b", re.I),
    "dir": re.compile(r"\b(folder|directory|mkdir)\b", re.I),
    "move": re.compile(r"\b(move|rename|mv)\b", re.I),
    "inputs": re.compile(re.escape(INPUTS_HEADER)),
}


class Step(BaseModel):
    model_config = ConfigDict(frozen=True)
    tool: str
    thought: str
    args: dict[str, JsonValue]
    observation: str


class Demo(BaseModel):
    """One worked example."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    skills: list[str] = Field(min_length=1)
    goal: str
    plan: list[str] = Field(min_length=1)
    steps: list[tuple[str, str, dict[str, JsonValue], str]] = Field(min_length=1)
    fixed: bool = False
    """One of the two examples every goal got before demonstrations were chosen."""
    chosen: bool = True
    """May be chosen for a goal (False: shown only in the fixed set)."""

    @property
    def tools(self) -> set[str]:
        return {tool for tool, *_ in self.steps}

    def words(self) -> set[str]:
        return set(_WORD.findall(self.goal.lower()))


class Library(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    format: int
    demos: list[Demo] = Field(min_length=1)


@cache
def library() -> Library:
    """The demonstrations shipped in ``demos.toml`` (validated once)."""
    text = resources.files(__package__).joinpath("demos.toml").read_text()
    return Library.model_validate(tomllib.loads(text))


def goal_skills(goal: str, deliverables: Sequence[agent_pb2.Deliverable]) -> set[str]:
    """The skills a goal calls for: its deliverables' kinds and the words that cue a tool."""
    skills = {d.kind for d in deliverables if d.kind != "keep"}
    skills |= {skill for skill, cue in _CUES.items() if cue.search(goal)}
    return skills


def choose(
    goal: str,
    deliverables: Sequence[agent_pb2.Deliverable],
    tools: set[str],
    fits: Callable[[list[Demo]], bool],
    *,
    style: str = "chosen",
) -> list[Demo]:
    """The demonstrations for ``goal``: those whose tools are all enabled, best first, as many as
    ``fits`` accepts (at least one, at most MAX_DEMOS). ``style="fixed"``: the fixed pair."""
    usable = [d for d in library().demos if d.tools <= tools]
    if style == "fixed":
        return [d for d in usable if d.fixed]
    wanted = goal_skills(goal, deliverables)
    words = set(_WORD.findall(goal.lower()))

    def score(d: Demo) -> tuple[int, int, int]:
        covered = len(wanted & set(d.skills))
        unneeded = len(set(d.skills) - wanted)
        return covered, -unneeded, len(words & d.words())

    ranked = sorted((d for d in usable if d.chosen), key=score, reverse=True)
    chosen: list[Demo] = []
    for demo in ranked:
        if len(chosen) == MAX_DEMOS:
            break
        if not chosen or fits([*chosen, demo]):
            chosen.append(demo)
    return chosen
