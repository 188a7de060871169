"""The edge's areas of the ``edgehub`` CLI, described without importing them (``edgehub.cli.area``):
the ``edgehub.cli`` entry points of this member name these, and each app takes its help from here."""

from __future__ import annotations

from edgehub.cli.area import Area

EDGE = Area("The edge daemon: runs agents on this device.", "edgehub.edge.cli.daemon:edge_app")
AGENT = Area("Agents on this device: run a goal, list, trace.", "edgehub.edge.cli.agents:agent_app")
APPROVALS = Area("Tool calls waiting for an operator's decision.", "edgehub.edge.cli.safety:approvals_app")
POLICY = Area("Check and try the tool policy.", "edgehub.edge.cli.safety:policy_app")
PII = Area("Masked PII: what leaves the device, and unmasking on it.", "edgehub.edge.cli.safety:pii_app")
EVAL = Area(
    "Measure how often agents reach their goals (checked by side effects).", "edgehub.edge.eval.cli:eval_app"
)
