"""L1 in memory: an agent's recent turns as the prompt renders them."""

from __future__ import annotations

from dataclasses import dataclass

from edgehub.protocol.v1 import agent_pb2


@dataclass(slots=True)
class Window:
    """L1 in memory: the turns after the summary, and their rendering in the prompt."""

    from_step: int
    turns: list[agent_pb2.Turn]
    text: str
    tokens: int
    """Tokens of ``text`` as rendered (turn wrappers and labels included), kept up to date."""

    def extend(self, turns: list[agent_pb2.Turn], text: str, tokens: int) -> None:
        self.turns.extend(turns)
        self.text += text
        self.tokens += tokens
