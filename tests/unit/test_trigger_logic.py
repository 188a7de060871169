"""Triggers' logic: templates (no attribute access), conditions, the gate (dedupe, cooldown, rate limit),
the config's checks, and one trigger's sink over a real store (records, one agent per storm, a restart
keeping the windows)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from pydantic import ValidationError

from edgehub.edge.config import EdgeConfig
from edgehub.edge.store.sqlite import SqliteStore
from edgehub.edge.triggers import Gate, GateRules, GoalTemplate, Outcome, TemplateError, holds
from edgehub.edge.triggers.cron import CronSource
from edgehub.edge.triggers.runner import TriggerSink
from edgehub.edge.triggerspec import CronTrigger
from edgehub.protocol.v1 import agent_pb2

EVENT = {"topic": "plant/3/pressure", "payload": {"pressure": 9.1, "line": {"id": "L3"}, "v": [4, 5]}}


def test_a_template_fills_dotted_fields_and_writes_objects_as_json() -> None:
    t = GoalTemplate(
        "Line ${payload.line.id}: $topic at ${payload.pressure} bar, $$5 ${payload.v.1} ${payload.line}"
    )
    assert t.fill(EVENT) == 'Line L3: plant/3/pressure at 9.1 bar, $5 5 {"id": "L3"}'


def test_a_template_reaches_no_attribute_and_names_a_missing_field() -> None:
    with pytest.raises(TemplateError, match=r"no field 'payload.__class__'"):
        GoalTemplate("${payload.__class__}").fill(EVENT)
    with pytest.raises(TemplateError, match=r"no field 'payload.v.7'"):
        GoalTemplate("${payload.v.7}").fill(EVENT)
    with pytest.raises(TemplateError, match="must start"):
        GoalTemplate("costs $ 5")
    assert GoalTemplate("{0.__class__} stays text").fill(EVENT) == "{0.__class__} stays text"


def test_a_value_is_cut_so_a_payload_cannot_flood_the_goal() -> None:
    assert len(GoalTemplate("$x").fill({"x": "a" * 10_000})) == 500


@pytest.mark.parametrize(
    ("payload", "op", "value", "expected"),
    [
        ({"p": 9}, ">", 8.5, True),
        ({"p": 8.5}, ">", 8.5, False),
        ({"p": "9.0"}, ">=", 9, True),
        ({"p": 3}, "<", 4, True),
        ({"p": "open"}, "==", "open", True),
        ({"p": True}, "!=", False, True),
    ],
)
def test_conditions_compare_numbers_as_numbers(
    payload: dict[str, object], op: str, value: object, expected: bool
) -> None:
    assert holds(payload, "p", op, value) is expected  # type: ignore[arg-type]


def test_a_condition_on_a_missing_or_non_numeric_field_is_a_bad_payload() -> None:
    with pytest.raises(TemplateError):
        holds({"q": 1}, "p", ">", 1)
    with pytest.raises(TypeError, match="not a number"):
        holds({"p": "high"}, "p", ">", 1)
    with pytest.raises(TypeError, match="not a number"):
        holds({"p": [1]}, "p", ">", 1)


def test_dedupe_lets_one_start_per_key_and_window() -> None:
    gate = Gate(GateRules(dedupe_s=60))
    assert gate.decide("a", 0) is Outcome.STARTED
    gate.started("a", 0)
    assert [gate.decide("a", t) for t in (1, 30, 59.9)] == [Outcome.DEDUPED] * 3
    assert gate.decide("b", 2) is Outcome.STARTED  # another key is another alarm
    assert gate.decide("a", 60) is Outcome.STARTED  # the window opened by the start has closed


def test_cooldown_counts_from_the_last_start_whatever_the_key() -> None:
    gate = Gate(GateRules(cooldown_s=10))
    gate.started("a", 100)
    assert gate.decide("b", 105) is Outcome.COOLDOWN
    assert gate.decide("b", 110) is Outcome.STARTED


def test_the_rate_limit_is_a_sliding_minute_of_starts() -> None:
    gate = Gate(GateRules(rate_limit=2))
    gate.started("a", 0)
    gate.started("b", 10)
    assert gate.decide("c", 59) is Outcome.RATE_LIMITED
    assert gate.decide("c", 60) is Outcome.STARTED  # the first start left the window


def test_dedupe_is_checked_before_cooldown_and_rate() -> None:
    gate = Gate(GateRules(dedupe_s=30, cooldown_s=30, rate_limit=1))
    gate.started("a", 0)
    assert gate.decide("a", 1) is Outcome.DEDUPED
    assert gate.decide("b", 1) is Outcome.COOLDOWN
    assert gate.decide("b", 45) is Outcome.RATE_LIMITED


def _cfg(**trigger: object) -> EdgeConfig:
    base: dict[str, object] = {"id": "t1", "goal": "check $kind"}
    if "kind" not in trigger:
        base |= {"kind": "mqtt", "topic": "a/#"}
    return EdgeConfig.model_validate({"triggers": [{**base, **trigger}]})


@pytest.mark.parametrize(
    ("trigger", "error"),
    [
        ({"id": "bad id!"}, "not an id"),
        ({"goal": "fix $"}, "must start"),
        ({"kind": "cron", "schedule": "every day"}, "not a cron expression"),
        ({"kind": "cron", "schedule": "0 2 * * *", "timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"kind": "modbus", "host": "127.0.0.1", "address": 3}, "needs a condition"),
        ({"kind": "webhook", "port": 0}, "exactly one of token_file or token_env"),
        ({"broker": "http://x"}, "not mqtt://"),
        ({"condition": {"field": "x", "op": ">", "value": "high"}}, "compares only with == or !="),
        ({"kind": "nats", "subject": "a.*"}, "subject"),
    ],
)
def test_the_config_refuses_bad_triggers_naming_what_is_wrong(trigger: dict[str, object], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        _cfg(**trigger)


def test_two_triggers_with_one_id_are_refused() -> None:
    t = {"id": "t1", "kind": "mqtt", "topic": "a/#", "goal": "g"}
    with pytest.raises(ValidationError, match="two triggers have the id 't1'"):
        EdgeConfig.model_validate({"triggers": [t, t]})


def test_a_trigger_budget_takes_only_what_it_sets() -> None:
    (t,) = _cfg(max_steps=4).triggers
    budget = t.budget()
    assert budget is not None
    assert (budget.max_steps, budget.max_tokens) == (4, 0)
    assert _cfg().triggers[0].budget() is None


def test_cron_gives_the_next_time_in_the_triggers_zone() -> None:
    (t,) = _cfg(kind="cron", schedule="0 2 * * *", timezone="Europe/Berlin").triggers
    assert isinstance(t, CronTrigger)
    src = CronSource(t, sink=None)  # type: ignore[arg-type]
    after = dt.datetime(2026, 7, 1, 12, 0, tzinfo=dt.UTC)
    assert src.next_time(after) == dt.datetime(2026, 7, 2, 0, 0, tzinfo=dt.UTC)  # 02:00 CEST


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _sink(store: SqliteStore, clock: Clock, scheduled: list[int], **trigger: object) -> TriggerSink:
    (t,) = _cfg(**trigger).triggers
    return TriggerSink(t, store, lambda: scheduled.append(1), clock=clock)


async def test_a_storm_starts_one_agent_and_records_every_event(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path / "edge.db", device_id="d")
    clock, scheduled = Clock(), []
    sink = _sink(
        store,
        clock,
        scheduled,
        goal="Pressure ${payload.pressure} on $topic",
        dedupe_key="${payload.alarm}",
        dedupe_s=60,
        condition={"field": "pressure", "op": ">", "value": 8.5},
    )
    outcomes = []
    for i in range(50):
        clock.now += 0.1
        outcomes.append(await sink.event({"pressure": 9 + i / 100, "alarm": "P1"}, {"topic": "p/3"}))
    assert (await sink.event({"pressure": 1, "alarm": "P1"}, {"topic": "p/3"}))[0] is Outcome.CONDITION_FALSE
    assert (await sink.event({"alarm": "P1"}, {"topic": "p/3"}))[0] is Outcome.BAD_PAYLOAD
    started = [a for o, a in outcomes if o is Outcome.STARTED]
    assert len(started) == 1
    assert [o for o, _ in outcomes[1:]] == [Outcome.DEDUPED] * 49
    assert scheduled == [1]
    state = store.load_agent(started[0])
    assert state.goal == "Pressure 9.0 on p/3"
    assert state.status == agent_pb2.AGENT_STATUS_PENDING
    records = store.trigger_events("t1", limit=100)
    assert len(records) == 50  # condition_false and bad payloads are counted, not recorded
    assert records[-1].outcome == "started"
    assert records[-1].agent_id == started[0]
    assert {r.dedupe_key for r in records} == {"P1"}
    assert len({r.digest for r in records}) == 50


async def test_a_restart_keeps_the_dedupe_window_from_the_record(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path / "edge.db", device_id="d")
    clock = Clock()
    first = _sink(store, clock, [], dedupe_s=60)
    assert (await first.event({}, {"topic": "x"}))[0] is Outcome.STARTED
    clock.now += 30
    again = _sink(store, clock, [], dedupe_s=60)  # the daemon restarted
    assert (await again.event({}, {"topic": "x"}))[0] is Outcome.DEDUPED
    clock.now += 31
    assert (await again.event({}, {"topic": "x"}))[0] is Outcome.STARTED
