"""The hub's areas of the ``edgehub`` CLI, described without importing them (``edgehub.cli.area``):
the ``edgehub.cli`` entry points of this member name these, and each app takes its help from here."""

from __future__ import annotations

from edgehub.cli.area import Area

HUB = Area(
    "The hub daemon: fleet registry over NATS JetStream and the management API.",
    "edgehub.hub.cli.daemon:hub_app",
)
DEVICES = Area(
    "Devices reporting to the hub (through its management API).", "edgehub.hub.cli.fleet:devices_app"
)
AGENTS = Area(
    "Agents across the fleet (through the hub's management API).", "edgehub.hub.cli.fleet:agents_app"
)
KNOWLEDGE = Area(
    "The hub's L4 knowledge graph (through the hub's management API).", "edgehub.hub.cli.fleet:knowledge_app"
)
TOKENS = Area(
    "Operator API tokens (roles: viewer, operator, admin; optionally scoped to some devices).",
    "edgehub.hub.cli.fleet:tokens_app",
)
GOAL = Area(
    "Goals: planned by the hub into a DAG of tasks, run by agents across the fleet.",
    "edgehub.hub.cli.goals:goal_app",
)
POLICY = Area(
    "Fleet policy: safety policy files pushed to devices as signed, versioned bundles.",
    "edgehub.hub.cli.policy:policy_app",
)
MODELS = Area(
    "Models: parity-gated rollouts (a new model in shadow, wave by wave, halted or promoted by the hub).",
    "edgehub.hub.cli.rollouts:models_app",
)
