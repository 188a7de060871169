"""Fuzzed events through a real nats-server to a real hub (issue 17): the in-process ``events`` fuzz
target's generator (``tests/fuzz/targets/events.py``), driven by seeded random bytes instead of
libFuzzer, publishes a few hundred messages on events subjects of the hub's stream; every one is a
message the applier rejects (checked with its own ``decode`` first) or an event for an agent in the
hub's namespace that no device may register (the router refuses it). Then:

- every one of them is in the dead letters, none is applied: no agent is listed, and the sequence
  record of no device moved for a rejected message;
- the hub keeps working: a valid event after them is applied, and its health is SERVING.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import nats
import pytest
from atheris import FuzzedDataProvider
from nats.aio.client import Client
from nats.js.errors import NoKeysError, NoStreamResponseError

from edgehub.protocol import subjects
from edgehub.protocol.v1 import agent_pb2, events_pb2
from edgehub.protocol.v1 import hub_pb2 as H  # noqa: N812 - the house alias
from edgehub.sync import MessageRejected, decode
from edgehub.sync.fake import FakeMsg, FakeRefused, check_subject
from edgehub.sync.streams import APPLIED
from tests.fuzz.targets import events as target
from tests.harness.hub import Hub, start_hub
from tests.harness.wait import eventually
from tests.integration.test_id_bounds import api_as, serving

S = agent_pb2
FENCED = 20
SEED = 17


def rejected_messages(n: int) -> list[FakeMsg]:
    """``n`` fuzzed messages the applier rejects, on subjects a server accepts into the stream."""
    target.WORLD.words = [*target.SENDERS, "agent-x1", "g-0123456789ab-a-1", "g-0123456789ab"]
    rng, out = random.Random(SEED), []
    while len(out) < n:
        msg = target.message(FuzzedDataProvider(rng.randbytes(rng.randint(16, 1024))))
        try:
            check_subject(msg.subject)
            decode(msg)  # type: ignore[arg-type]
        except MessageRejected:
            if msg.subject.startswith("edgehub.ev.") and len(msg.data) < 512 * 1024:
                out.append(msg)
        except FakeRefused:
            continue
    return out


def fenced(device: str, seq: int) -> events_pb2.EdgeEvent:
    """A well-formed step for a planner's agent id that is registered to nobody."""
    agent = "g-0123456789ab-a-1"
    event = events_pb2.EdgeEvent(
        schema_version=1, event_id=f"{agent}/{seq}", device_id=device, seq=seq, agent_id=agent
    )
    event.step.CopyFrom(S.StepEvent(agent_id=agent, step=seq, status=S.AGENT_STATUS_RUNNING))
    return event


async def dead_letters(nc: Client) -> int:
    info = await nc.jetstream().stream_info(
        subjects.DEADLETTER_STREAM, subjects_filter=subjects.deadletter("events")
    )
    return info.state.messages


@pytest.mark.parametrize("messages", [100, 300])
async def test_fuzzed_events_are_dead_lettered_none_is_applied_and_the_hub_keeps_working(
    tmp_path: Path, messages: int
) -> None:
    hub = start_hub(tmp_path, "hub-fuzz")
    hub.wait_ready()
    try:
        await _fuzz(hub, messages)
    finally:
        hub.stop()


async def _fuzz(hub: Hub, messages: int) -> None:
    nc = await nats.connect(hub.url, user_credentials=hub.creds())
    js = nc.jetstream()
    try:
        sent = 0
        for msg in rejected_messages(messages):
            try:
                await js.publish(msg.subject, msg.data)
                sent += 1
            except NoStreamResponseError:  # a subject the stream does not take (not an events subject)
                continue
        for seq in range(1, FENCED + 1):
            event = fenced("dev-fz", seq)
            await js.publish(subjects.events("dev-fz", event.agent_id), event.SerializeToString())
        assert sent > messages // 2
        expected = sent + FENCED
        found, still = 0, 0
        while found < expected and still < 50:  # until all are in, or ten seconds without one more
            now = await dead_letters(nc)
            found, still = now, (still + 1 if now == found else 0)
            await asyncio.sleep(0.2)
        assert found == expected, f"{found} dead letters of {expected} rejected messages"
        api = api_as(hub)
        assert not api.ListAgents(H.ListAgentsRequest(), timeout=10).agents  # nothing was applied
        try:
            keys = await (await js.key_value(APPLIED.name)).keys()
        except NoKeysError:
            keys = []
        assert keys == ["dev-fz"], keys  # only the well-formed (fenced) events moved a sequence

        good = events_pb2.EdgeEvent(
            schema_version=1, event_id="agent-ok/1", device_id="dev-ok", seq=1, agent_id="agent-ok"
        )
        good.step.CopyFrom(S.StepEvent(agent_id="agent-ok", step=1, status=S.AGENT_STATUS_RUNNING))
        await js.publish(subjects.events("dev-ok", "agent-ok"), good.SerializeToString())

        def listed() -> list[str]:
            return [a.agent_id for a in api.ListAgents(H.ListAgentsRequest(), timeout=10).agents]

        await eventually(listed, within=60, what="the valid event's agent")
        assert listed() == ["agent-ok"]
        assert serving(hub) == 1  # SERVING
        assert hub.proc.poll() is None
    finally:
        await nc.close()
