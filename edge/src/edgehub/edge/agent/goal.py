"""What a goal given to this device must be, checked before an agent is created for it.

Two checks, in order:

1. ``check_goal`` (no model needed): text of 1 to ``MAX_GOAL_CHARS`` characters once surrounding
   whitespace is stripped, with no control characters other than tab and newline. 4,000 characters is
   the hub's limit for a goal too, and about 900 tokens of English prose: what the default context
   (2,048 tokens) leaves for the goal beside the prompt's fixed part, one action and ``MIN_WINDOW``.
2. ``goal_room`` (the model loaded): the goal's task block, the agent's header (tools and the
   demonstrations chosen for the goal), one action and ``MIN_WINDOW`` tokens of steps must fit the
   model's context. Text that tokenizes badly (symbols, other scripts) can pass the first check and
   fail this one; the agent loop refuses such a goal before its first step, and ``edgehub agent run``
   before it creates the agent.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import GoalError

MAX_GOAL_CHARS = 4000
"""At most this many characters (Unicode code points) after stripping surrounding whitespace."""
MIN_WINDOW = 256
"""Tokens the context must keep free for the agent's steps (its thoughts, actions and observations)
besides the goal and the prompt's fixed part; with less, the first steps would not fit."""
ALLOWED_CONTROLS = frozenset("\t\n\r")


def check_goal(text: str) -> str:
    """``text`` without surrounding whitespace; ``GoalError`` naming the problem when it cannot be a goal."""
    goal = text.strip()
    if not goal:
        raise GoalError("the goal is empty" if not text else "the goal is only whitespace")
    if len(goal) > MAX_GOAL_CHARS:
        raise GoalError(f"the goal is {len(goal):,} characters; at most {MAX_GOAL_CHARS:,}")
    for i, ch in enumerate(goal):
        if (ch < " " or ch == "\x7f") and ch not in ALLOWED_CONTROLS:
            raise GoalError(f"the goal holds a control character (U+{ord(ch):04X} at character {i + 1})")
    return goal


def goal_bytes(data: bytes, source: str) -> str:
    """A goal read as bytes from ``source`` (a file, standard input): UTF-8 text, then ``check_goal``."""
    if len(data) > 4 * MAX_GOAL_CHARS:  # no UTF-8 text this long has MAX_GOAL_CHARS characters or fewer
        over = f"over {4 * MAX_GOAL_CHARS:,} bytes, so over {MAX_GOAL_CHARS:,} characters"
        raise GoalError(f"the goal in {source} is {over}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        why = f"{exc.reason} at byte {exc.start}"
        raise GoalError(f"the goal in {source} is not UTF-8 text ({why})") from None
    return check_goal(text)


def read_goal(path: Path | None) -> str:
    """The goal in the file at ``path``, or on standard input when ``path`` is None; ``GoalError`` when it
    cannot be read or is not a goal. Reads at most one byte past what a goal may hold."""
    source = "standard input" if path is None else str(path)
    try:
        if path is None:
            data = sys.stdin.buffer.read(4 * MAX_GOAL_CHARS + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(4 * MAX_GOAL_CHARS + 1)
    except FileNotFoundError:
        raise GoalError(f"goal file {source}: not found") from None
    except IsADirectoryError:
        raise GoalError(f"goal file {source}: is a folder, not a file") from None
    except OSError as exc:
        raise GoalError(f"goal {source}: cannot read ({exc.strerror or exc})") from None
    return goal_bytes(data, source)


def too_big(goal_tokens: int, fixed_tokens: int, n_ctx: int) -> GoalError:
    """The error for a goal of ``goal_tokens`` that, with ``fixed_tokens`` of everything else the first
    step needs, does not fit a context of ``n_ctx``."""
    room = max(0, n_ctx - fixed_tokens)
    return GoalError(
        f"the goal is {goal_tokens:,} tokens; the model's context of {n_ctx:,} tokens leaves {room:,} for it "
        f"(beside the prompt, one action and {MIN_WINDOW} tokens for the agent's steps): shorten the goal "
        "or raise [model] n_ctx"
    )
