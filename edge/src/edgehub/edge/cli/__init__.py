"""The edge's commands of the ``edgehub`` CLI (plugged in through the ``edgehub.cli`` entry points)."""
