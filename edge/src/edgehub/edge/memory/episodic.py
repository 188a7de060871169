"""L3 episodic memory: what an agent did and saw, embedded and recalled by meaning.

Episodes are derived from the mind-log (each action step and each end becomes one) after the step's
checkpoint, in their own transaction, keyed by the step's event id: indexing is idempotent and a crash
between a checkpoint and its episode is repaired by ``catch_up`` (the mind-log is the source of truth,
L3 is an index of it). Agents can also ``remember`` a note explicitly, with an importance.

Recall = KNN in sqlite-vec (``embedding MATCH ? AND k = ?``, cosine) for ``k * OVERSAMPLE``
candidates, re-ranked by ``similarity x recency x importance``::

    score = (1 - cosine_distance) * (0.5 ** (age / half_life)) ** recency_weight * (0.5 + 0.5 * importance)

so an old memory fades but is not forgotten, and an unimportant one counts half, never zero.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from edgehub.protocol.v1 import agent_pb2
from edgehub.sync import Stopped, until_stopped

from ..store.base import Episode, EpisodeStore

S = agent_pb2
log = logging.getLogger("edgehub.edge.memory")
OVERSAMPLE = 4
TEXT_LIMIT = 600
PROMPT_MEMORIES = 3
REMEMBERED = "remember/"
"""Key prefix of a memory an agent stored on purpose (the ``remember`` tool)."""
PROMPT_SIMILARITY = 0.35
"""Cosine similarity below which a memory stays out of the prompt (the recall tool has no floor). On
tests/data/recall_set.json (distractors chosen to share words and topic) MiniLM scores relevant
memories at median 0.54 and the others at median 0.08 (p99 0.32): at 0.35, 92% of relevant pairs and
0.9% of the others pass. A small model is easily led astray by an unrelated memory, hence a floor."""


OUTCOME = "outcome/"
"""Key prefix of the distilled memory of a finished agent (its goal and answer)."""
DISTILLED = (REMEMBERED, OUTCOME)
DISTILLED_OVERSAMPLE = 4
"""Distilled memories are a small share of the episodes: look at more candidates to find them."""


ACKNOWLEDGEMENTS = {"", "done", "ok", "okay", "noted", "finished", "complete", "completed", "yes", "success"}
"""Answers that only say the agent finished: an outcome holding one teaches a later agent nothing."""


def outcome_text(goal: str, answer: str) -> str:
    """What a finished agent learned, as one sentence (prose: it embeds by meaning, like a note)."""
    return f"Earlier goal: {goal[:300]} Its verified result: {answer[:280]}"[:TEXT_LIMIT]


class Embedder(Protocol):
    dim: int
    name: str

    def embed(self, texts: list[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class Recalled:
    episode: Episode
    similarity: float
    score: float


def _arg_values(args_json: str) -> str:
    try:
        args = json.loads(args_json)
    except ValueError:
        return args_json
    return "; ".join(str(v) for v in args.values()) if isinstance(args, dict) else str(args)


def step_text(event: agent_pb2.StepEvent) -> str:
    """What an episode says about a step, as a sentence: the thought, the call's argument values, then
    the tool and what came back (truncated). Prose, not JSON: JSON's keys and punctuation pull the
    embedding away from the meaning (a paraphrase of the content scored 0.36 against the JSON form
    and 0.50 against this one with MiniLM)."""
    if event.kind == S.STEP_KIND_END:
        return f"Finished: {event.detail}"[:TEXT_LIMIT]
    seen = event.observation.output or event.observation.error
    if not event.action.tool:
        return f"{event.thought} ({seen})"[:TEXT_LIMIT]
    return f"{event.thought}: {_arg_values(event.action.args_json)} ({event.action.tool} -> {seen})"[
        :TEXT_LIMIT
    ]


def step_importance(event: agent_pb2.StepEvent) -> float:
    """A failure or an outcome matters more than a routine step."""
    if event.kind == S.STEP_KIND_END or event.action.tool == "finish":
        return 0.9
    if event.observation.error or not event.observation.ok:
        return 0.8
    return 0.5


class EpisodicMemory:
    """L3 on the device's store. Embedding runs in a worker thread; SQLite stays on the caller's."""

    def __init__(
        self,
        store: EpisodeStore,
        embedder: Embedder,
        *,
        half_life_s: float = 7 * 24 * 3600.0,
        recency_weight: float = 1.0,
        replicate: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.replicate = replicate
        """New episodes also enter the outbox (to the hub's consolidation), in the same transaction."""
        self.embedder = embedder
        self.half_life_s = half_life_s
        self.recency_weight = recency_weight
        self.clock = clock
        self._last_id = 0
        self._catching_up = asyncio.Lock()

    def _vectors(self, texts: list[str]) -> list[bytes]:
        return [np.asarray(v, np.float32).tobytes() for v in self.embedder.embed(texts)]

    async def add(self, episodes: Sequence[Episode]) -> int:
        """Embed (in a thread) and store ``episodes``; returns how many were new."""
        if not episodes:
            return 0
        vectors = await asyncio.to_thread(self._vectors, [e.text for e in episodes])
        return self.store.add_episodes(
            [replace(e, embedding=v) for e, v in zip(episodes, vectors, strict=True)],
            replicate=self.embedder.name if self.replicate else None,
        )

    async def index_steps(self, events: Sequence[agent_pb2.StepEvent]) -> int:
        episodes = [
            Episode(
                key=e.event_id,
                agent_id=e.agent_id,
                text=step_text(e),
                at=self._at(e),
                importance=step_importance(e),
                source_step=e.step,
            )
            for e in events
            if e.kind in (S.STEP_KIND_ACTION, S.STEP_KIND_END)
        ]
        episodes += [o for e in events if (o := self._outcome(e)) is not None]
        return await self.add(episodes)

    def _at(self, event: agent_pb2.StepEvent) -> float:
        return event.at.ToMilliseconds() / 1000 if event.HasField("at") else self.clock()

    def _outcome(self, event: agent_pb2.StepEvent) -> Episode | None:
        """What an agent that finished learned: its goal and its answer, as one distilled memory (none
        when the finish check found its work incomplete or could check it only in part: an unverified
        answer is not knowledge; none
        when the answer only acknowledges the end)."""
        if event.status != S.AGENT_STATUS_FINISHED or event.action.tool != "finish":
            return None
        try:
            state = self.store.load_agent(event.agent_id)
        except Exception:  # the agent was removed since: its outcome is not worth keeping
            return None
        if state.verification in (S.VERIFICATION_UNVERIFIED, S.VERIFICATION_PARTIAL):
            return None
        if " ".join(event.observation.output.split()).casefold().strip(" .!") in ACKNOWLEDGEMENTS:
            return None
        text = outcome_text(state.goal, event.observation.output)
        return Episode(f"{OUTCOME}{event.agent_id}", event.agent_id, text, self._at(event), 0.9, event.step)

    @property
    def indexed_through(self) -> int:
        """The last mind-log row looked at: every step up to it has its episode (retention prunes no
        mind-log row after it)."""
        return self._last_id

    async def catch_up(self, batch: int = 256) -> int:
        """Index every mind-log step that has no episode yet (new steps, or steps a crash left
        unindexed); returns how many episodes were added. Incremental: it continues after the last
        mind-log row it saw, and one runs at a time."""
        total = 0
        async with self._catching_up:
            while pending := self.store.unindexed_steps(self._last_id, batch):
                total += await self.index_steps([event for _, event in pending])
                self._last_id = pending[-1][0]
        return total

    async def remember(self, agent_id: str, text: str, importance: float, step: int) -> bool:
        """An explicit memory (the ``remember`` tool); the same text twice is stored once."""
        key = f"{REMEMBERED}{agent_id}/{hashlib.sha256(text.encode()).hexdigest()[:16]}"
        episode = Episode(
            key, agent_id, text[:TEXT_LIMIT], self.clock(), max(0.0, min(1.0, importance)), step
        )
        return await self.add([episode]) == 1

    async def recall(self, query: str, k: int = 5, *, agent_id: str | None = None) -> list[Recalled]:
        """The ``k`` most relevant episodes for ``query`` (this agent's only, when ``agent_id``)."""
        if k <= 0 or not query.strip():
            return []
        await self.catch_up()  # read your own steps: the ones just committed are recallable
        (vector,) = await asyncio.to_thread(self._vectors, [query])
        return self.rank(self.store.nearest_episodes(vector, k * OVERSAMPLE, agent_id), k)

    async def recall_texts(self, query: str, k: int, agent_id: str) -> list[str]:
        """What the ``recall`` tool shows: this agent's best memories, as text."""
        return [r.episode.text for r in await self.recall(query, k, agent_id=agent_id)]

    async def recall_for_prompt(
        self,
        query: str,
        agent_id: str,
        fits: Callable[[list[str]], bool],
        *,
        distilled: bool = True,
        k: int = PROMPT_MEMORIES,
    ) -> list[str]:
        """What the prompt's task block shows: up to ``k`` memories of *other* agents (the agent's own
        steps are in its window or summary) at least PROMPT_SIMILARITY alike, best first, while
        ``fits`` (the token budget) accepts them. ``distilled``: only what earlier agents learned
        (notes they remembered, results of goals they finished), never the lines of their actions,
        which a small model pastes into its own (issue 18)."""
        chosen: list[str] = []
        wanted = k * OVERSAMPLE * (DISTILLED_OVERSAMPLE if distilled else 1)
        for r in await self.recall(query, wanted):
            if len(chosen) == k:
                break
            if r.episode.agent_id == agent_id or r.similarity < PROMPT_SIMILARITY:
                continue
            if distilled and not r.episode.key.startswith(DISTILLED):
                continue
            if r.episode.text in chosen or not fits([*chosen, r.episode.text]):
                continue
            chosen.append(r.episode.text)
        return chosen

    def rank(self, candidates: Sequence[Episode], k: int) -> list[Recalled]:
        now = self.clock()
        scored = []
        for e in candidates:
            similarity = 1.0 - e.distance
            age = max(0.0, now - e.at)
            recency = (
                (0.5 ** (age / self.half_life_s)) ** self.recency_weight if self.half_life_s > 0 else 1.0
            )
            scored.append(Recalled(e, similarity, similarity * recency * (0.5 + 0.5 * e.importance)))
        return sorted(scored, key=lambda r: r.score, reverse=True)[:k]


class EpisodeIndexer:
    """Keeps L3 up to date while the daemon runs: ``notify`` (the loop's step hook) wakes it, and it
    catches up with the mind-log (all of it on the first pass), so recall rarely has to wait."""

    def __init__(self, memory: EpisodicMemory) -> None:
        self.memory = memory
        self.indexed = 0
        self._wake = asyncio.Event()

    def notify(self, _event: agent_pb2.StepEvent | None = None) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        self._wake.set()
        while not stop.is_set():
            try:
                await until_stopped(self._wake.wait(), stop)
            except Stopped:
                return
            self._wake.clear()
            try:
                self.indexed += await self.memory.catch_up()
            except Exception as exc:  # L3 is an index of the mind-log: the next wake or start retries
                log.warning("L3 indexing failed (%s: %s); will retry", exc.__class__.__name__, exc)
