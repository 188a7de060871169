"""A schedule: croniter gives the next time in the trigger's time zone; the payload says which."""

from __future__ import annotations

import asyncio
import datetime as dt
import zoneinfo

from croniter import croniter

from ..triggerspec import CronTrigger
from .base import Sink


class CronSource:
    """Fires at each time of ``schedule`` (a time missed while the daemon was down is not caught up)."""

    def __init__(self, trigger: CronTrigger, sink: Sink) -> None:
        self.trigger = trigger
        self.sink = sink
        self.zone = zoneinfo.ZoneInfo(trigger.timezone)

    def next_time(self, after: dt.datetime) -> dt.datetime:
        """The first scheduled time after ``after`` (aware, in the trigger's zone)."""
        nxt: dt.datetime = croniter(self.trigger.schedule, after.astimezone(self.zone)).get_next(dt.datetime)
        return nxt

    async def run(self) -> None:
        due = self.next_time(dt.datetime.now(self.zone))
        while True:
            await asyncio.sleep(max(0.0, (due - dt.datetime.now(self.zone)).total_seconds()))
            await self.sink.event({"scheduled_at": due.isoformat()}, {})
            due = self.next_time(due)
