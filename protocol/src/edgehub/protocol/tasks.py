"""The text of a planned task as the hub writes it for the task's agent, shared so the edge can read
it: the task's own goal, then the results of the tasks it builds on, one per line after this header
(``- <task>: <result>``). An edge recognises a task that works from given results by the header."""

from __future__ import annotations

INPUTS_HEADER = "Results of the tasks this one builds on:"
