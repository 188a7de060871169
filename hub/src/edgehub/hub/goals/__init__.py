"""Multi-agent planning on the hub, the pure-logic part (issue 7; see docs/planning.md).

``draft`` (what the planner model writes: ``PlanDraft``, ``draft_schema``, ``parse_draft``),
``validate`` (``validate`` -> ``Plan``, a checked DAG with its repairs, under ``Limits``),
``fleet`` (``DeviceView``: a device twin as placement sees it) and ``assign`` (``assign``: a device
for each ready task, or ``Unplaced`` with a reason). No I/O and no model calls here: the planner's
model call, plan storage and dispatch build on these.

The goal itself: ``record`` (the ``edgehub.v1.Goal`` record; ``legacy`` reads version 1) and
``schedule`` (the scheduler, pure), stored and carried out by ``service.GoalService`` with its parts
``store``, ``work``, ``effects`` and ``intake``.
"""

from .assign import Assignment, Unplaced, assign
from .draft import PlanDraft, TaskDraft, draft_schema, parse_draft
from .errors import PlanningError, PlanRejected, SynthesisFailed
from .placement import BUILTIN_TOOLS, DeviceView, FleetCache
from .validate import Limits, Plan, PlannedTask, validate

__all__ = [
    "BUILTIN_TOOLS",
    "Assignment",
    "DeviceView",
    "FleetCache",
    "Limits",
    "Plan",
    "PlanDraft",
    "PlanRejected",
    "PlannedTask",
    "PlanningError",
    "SynthesisFailed",
    "TaskDraft",
    "Unplaced",
    "assign",
    "draft_schema",
    "parse_draft",
    "validate",
]
