"""``edgehub edge triggers``: the configured triggers, when each last fired, and the record of which
event started which agent (or why none)."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime

from rich.markup import escape
from rich.table import Table

from edgehub.cli.common import console

from ..config import EdgeConfig
from ..store.base import DeviceStore, TriggerEvent


def show(
    cfg: EdgeConfig, store: DeviceStore | None, *, trigger: str | None, limit: int, as_json: bool
) -> None:
    """Print the triggers and the newest ``limit`` records (of ``trigger``, or all)."""
    records = store.trigger_events(trigger, limit) if store is not None else []
    last = {t.id: _last(store, t.id) for t in cfg.triggers}
    if as_json:
        triggers = [
            {
                "id": t.id,
                "kind": t.kind,
                "enabled": t.enabled,
                "source": t.source(),
                "last": _json(last[t.id]),
            }
            for t in cfg.triggers
        ]
        print(json.dumps({"triggers": triggers, "events": [asdict(r) for r in records]}))
        return
    table = Table("trigger", "kind", "source", "enabled", "last event", "last start")
    for t in cfg.triggers:
        seen, started = last[t.id]
        start = f"{_when(started)} {started.agent_id}" if started else "-"
        table.add_row(t.id, t.kind, escape(t.source()), "yes" if t.enabled else "no", _when(seen), start)
    console.print(table)
    events = Table("received", "trigger", "outcome", "agent", "dedupe key", "event digest")
    for r in records:
        events.add_row(
            _when(r), r.trigger_id, r.outcome, r.agent_id or "-", escape(r.dedupe_key), r.digest[:12]
        )
    console.print(events)


def _last(store: DeviceStore | None, trigger_id: str) -> tuple[TriggerEvent | None, TriggerEvent | None]:
    """(the newest record, the newest start) of one trigger."""
    if store is None:
        return None, None
    newest, start = store.trigger_events(trigger_id, 1), store.trigger_events(trigger_id, 1, "started")
    return (newest[0] if newest else None), (start[0] if start else None)


def _json(last: tuple[TriggerEvent | None, TriggerEvent | None]) -> dict[str, object]:
    seen, started = last
    return {
        "event_at": seen.received_at if seen else None,
        "started_at": started.received_at if started else None,
        "agent_id": started.agent_id if started else None,
    }


def _when(r: TriggerEvent | None) -> str:
    if r is None:
        return "-"
    return datetime.fromtimestamp(r.received_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
