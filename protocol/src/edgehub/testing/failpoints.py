"""Crash injection for durability tests: kill the daemon (edge or hub) at a named point.

``EDGEHUB_FAILPOINTS="after_tool@2"`` makes the process SIGKILL itself when step 2 reaches the point
``after_tool``; several points are comma-separated; without ``@N`` a point fires whatever the step.
Unset (always, in production) it costs one dict lookup. Points:

- edge, in a step: ``after_intent`` (intent durable, tool not run), ``after_tool`` (tool ran, step
  not checkpointed), ``after_checkpoint`` (step committed);
- edge, in a migration (the step is the agent's): ``migrate_out.marked`` (the source stood down, the
  state not handed over), ``migrate_in.imported`` (the target imported, not reported);
- hub, in a migration: ``migration.transferred`` (the epoch moved, the migration not yet importing),
  ``migration.importing`` (importing recorded, MigrateIn not sent).
"""

from __future__ import annotations

import os
import signal

ENV = "EDGEHUB_FAILPOINTS"


def _parse(spec: str) -> dict[str, set[int]]:
    points: dict[str, set[int]] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, step = item.partition("@")
        points.setdefault(name, set()).add(int(step) if step else -1)
    return points


_POINTS = _parse(os.environ.get(ENV, ""))


def hit(name: str, step: int) -> None:
    """SIGKILL this process if failpoint ``name`` is armed for ``step`` (or for any step)."""
    steps = _POINTS.get(name)
    if steps and (step in steps or -1 in steps):
        os.kill(os.getpid(), signal.SIGKILL)
