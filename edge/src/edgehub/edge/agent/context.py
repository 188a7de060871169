"""What the model sees of an agent: the window of recent turns (L1, kept in memory, rebuilt from L2 after
a restart or a compaction), the prompt built around it, the think call, L3 recall into the task block,
and compaction when the window outgrows its budget.

The prompt is append-only between compactions (``prompt.py``), so the brain evaluates only each step's
new tokens; a compaction changes the task block and starts a new window.
"""

from __future__ import annotations

import logging

from edgehub.llm import Completion
from edgehub.protocol.v1 import agent_pb2

from ..errors import GoalError
from ..memory.l1 import steps_to_compact
from ..tracing import AgentSpans
from .deps import LoopDeps
from .goal import MIN_WINDOW, too_big
from .journal import Journal
from .prompt import PromptBuilder
from .shadow import ModelCall
from .steering import Steering
from .window import Window

S = agent_pb2
log = logging.getLogger("edgehub.edge.agent")
COMPACT_TO = 0.75
"""A compaction folds the window down to this share of its budget."""


class AgentContext:
    """The model's view of each agent the loop runs (see the module docstring)."""

    def __init__(
        self, deps: LoopDeps, prompts: PromptBuilder, steer: Steering, spans: AgentSpans, journal: Journal
    ) -> None:
        self.d = deps
        self.prompts = prompts
        self.steer = steer
        self._spans = spans
        self._journal = journal
        self._empty_task = deps.count_tokens(prompts.task("", ""))
        self._task_tokens: dict[str, int] = {}  # task block -> tokens; it changes only on compaction
        self._windows: dict[str, Window] = {}

    def forget(self, agent_id: str) -> None:
        """The agent ended: its window is not needed any more."""
        self._windows.pop(agent_id, None)

    def window(self, state: agent_pb2.AgentState) -> Window:
        """The agent's L1 window; (re)loaded from L2 after a restart or a compaction."""
        window = self._windows.get(state.agent_id)
        if window is None or window.from_step != state.summarized_through:
            turns = self.d.store.turns(state.agent_id, from_step=state.summarized_through)
            text = self.prompts.turns(turns)
            window = Window(state.summarized_through, turns, text, self.d.count_tokens(text))
            self._windows[state.agent_id] = window
        return window

    def prompt(self, state: agent_pb2.AgentState) -> str:
        window = self.window(state)
        task = self._task(state)
        warning = self.prompts.warning(state.guard.warning) if state.guard.warning else ""
        header = self.steer.header(state)
        return f"{header}{task}{window.text}{warning}{self.prompts.cue(state.step)}"

    async def think(self, state: agent_pb2.AgentState) -> tuple[Completion, ModelCall]:
        """The model's completion for this step, and the call it answered (what a shadow model is
        asked too)."""
        with self._spans.phase("think") as span:
            call = ModelCall(
                self.prompt(state),
                self.steer.schema(state, self.window(state).turns),
                self.d.max_action_tokens,
                self.prompts.special,
            )
            completion = await self.d.model.complete(
                call.prompt, json_schema=call.json_schema, max_tokens=call.max_tokens, special=call.special
            )
            self._spans.thought(span, completion)
        return completion, call

    def _task(self, state: agent_pb2.AgentState) -> str:
        plan = state.plan if state.summarized_through > 0 else ()
        return self.prompts.task(state.goal, state.summary, state.recalled, plan)

    async def recall(self, state: agent_pb2.AgentState, query: str) -> list[str]:
        """L3 memories for the task block, within ``recall_tokens`` (none when L3 is off)."""
        budget = self.d.cfg.recall_tokens
        if self.d.memory is None or budget <= 0:
            return []

        def fits(texts: list[str]) -> bool:
            return self.d.count_tokens(self.prompts.task("", "", texts)) - self._empty_task <= budget

        try:
            distilled = self.d.cfg.recall_style == "distilled"
            return await self.d.memory.recall_for_prompt(query, state.agent_id, fits, distilled=distilled)
        except Exception as exc:  # L3 is an aid: the agent works without it
            log.warning("recall for %s failed (%s: %s)", state.agent_id, type(exc).__name__, exc)
            return []

    def goal_problem(self, state: agent_pb2.AgentState) -> GoalError | None:
        """Why ``state``'s goal cannot be worked on in this model's context (``goal.py``), or None: its
        task block, the agent's header, room for recalled memories, one action and ``MIN_WINDOW``
        tokens of steps must all fit."""
        goal = self.d.count_tokens(state.goal)
        task = self.d.count_tokens(self._task(state))
        recall = self.d.cfg.recall_tokens if self.d.memory is not None else 0
        fixed = self.steer.header_tokens(state) + task - goal + recall + self.d.max_action_tokens + 16
        if goal + fixed + MIN_WINDOW <= self.d.n_ctx:
            return None
        return too_big(goal, fixed + MIN_WINDOW, self.d.n_ctx)

    def _window_budget(self, state: agent_pb2.AgentState) -> int:
        key = self._task(state)
        if key not in self._task_tokens:
            self._task_tokens.clear()
            self._task_tokens[key] = self.d.count_tokens(key)
        task = self._task_tokens[key]
        header = self.steer.header_tokens(state)
        room = self.d.n_ctx - header - task - self.d.max_action_tokens - 16
        configured = self.d.cfg.window_tokens
        return min(room, configured) if configured else room

    async def compact_if_needed(self, state: agent_pb2.AgentState) -> agent_pb2.AgentState:
        window = self.window(state)
        budget = self._window_budget(state)
        if window.tokens <= budget:
            return state
        turns = window.turns
        # the turns' own tokens leave out their labels and the chat template's wrappers: charge those
        # too, so the rendered window (what the model gets) fits; and fold down to COMPACT_TO of the
        # budget, not just under it: each compaction changes the task block, so the next step
        # re-evaluates the whole window, and compacting at every step once full would cost that each time
        overhead = max(0, window.tokens - sum(t.tokens for t in turns))
        fold = steps_to_compact(turns, max(0, int(budget * COMPACT_TO) - overhead))
        if not fold:
            return state
        old = [t for t in turns if t.step < fold]
        with self._spans.phase("compact"):
            summary = await self.d.model.call(
                lambda: self.d.compactor.summarize(state.goal, state.summary, old, max_tokens=160)
            )
            new = S.AgentState()
            new.CopyFrom(state)
            new.summary, new.summarized_through = summary, fold
            new.recalled[:] = await self.recall(new, f"{state.goal} {summary}")
            event = self._journal.event(new, S.STEP_KIND_COMPACTION, "compaction")
            event.detail = summary
            self._journal.checkpoint(new, event, [])
        return new
