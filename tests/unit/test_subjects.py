"""NATS subjects: ids become single tokens that cannot widen a subscription."""

from __future__ import annotations

import pytest

from edgehub.protocol import subjects


@pytest.mark.parametrize("device", ["dev-1", "dev.1", "a*b", "x>y", "has space", "50%"])
def test_any_id_is_one_token_and_round_trips(device: str) -> None:
    subject = subjects.events(device, "agent.7")
    assert subject.count(".") == 3
    assert not set("*> ") & set(subject)
    token = subject.split(".")[2]
    assert subjects.untoken(token) == device
    if device in ("dev-1", "dev.1"):
        assert subjects.parse_events(subject) == (device, "agent.7")
    else:  # no valid id: a subject naming one is refused (the applier dead-letters the event)
        with pytest.raises(ValueError, match="device_id"):
            subjects.parse_events(subject)


def test_filters_select_one_device_or_one_agent() -> None:
    assert subjects.device_events("d.1") == "edgehub.ev.d%2E1.*"
    assert subjects.agent_events("a1") == "edgehub.ev.*.a1"
    assert subjects.commands("d.1") == "edgehub.cmd.d%2E1"


@pytest.mark.parametrize(
    "subject", ["edgehub.cmd.d1", "edgehub.ev.d1", "other.ev.d1.a1", "edgehub.ev.d1.a1.x"]
)
def test_non_event_subjects_are_refused(subject: str) -> None:
    with pytest.raises(ValueError, match="not an events subject"):
        subjects.parse_events(subject)


def test_empty_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        subjects.events("", "a")
