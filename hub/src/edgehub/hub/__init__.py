"""The edgehub hub daemon (fleet registry, management API, planner, L4 graph): issue 4 onwards."""
