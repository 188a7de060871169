"""The agents' ``knowledge`` tool end to end: an edge's KnowledgeClient asks over a real nats-server in
operator mode (device credentials with their real subject permissions), the hub's KnowledgeResponder
answers from the session's real Neo4j. Offline: the answer is "hub unreachable" within the timeout, or
the cached answer marked with its age; and an agent whose tool call gets that answer goes on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import nats
import nkeys
import pytest
from nats.aio.client import Client, RawCredentials

from edgehub.edge.app import EdgeDaemon
from edgehub.edge.config import EdgeConfig
from edgehub.edge.store import SqliteStore
from edgehub.edge.uplink.knowledge import KnowledgeClient
from edgehub.hub.knowledge import Entity, Fact, KnowledgeGraph, Provenance
from edgehub.hub.knowledge.responder import KnowledgeResponder
from edgehub.llm.fake import FakeBrain
from edgehub.protocol import subjects
from edgehub.protocol.v1 import agent_pb2, knowledge_pb2
from edgehub.sync import NatsServer
from edgehub.sync.auth import Trust, creds_text, inbox_prefix, keypair, new_seed, public_key
from edgehub.sync.server import free_port

K = knowledge_pb2
S = agent_pb2
T0 = datetime(2026, 5, 1, tzinfo=UTC)
SEEN = Provenance(device_id="dev-1", agent_id="a-9")


def device_creds(trust: Trust, device_id: str) -> RawCredentials:
    seed = new_seed(nkeys.PREFIX_BYTE_USER)
    return RawCredentials(creds_text(trust.device_jwt(device_id, public_key(keypair(seed))), seed))


class Fleet:
    """A nats-server trusting a hub operator, a hub process's responder on the real graph, devices."""

    def __init__(
        self, folder: Path, server: NatsServer, trust: Trust, hub: Client, stop: asyncio.Event
    ) -> None:
        self.folder, self.server, self.trust, self.hub, self.stop = folder, server, trust, hub, stop
        self.clients: list[Client] = []

    async def device(self, device_id: str) -> Client:
        nc = await nats.connect(
            self.server.url,
            user_credentials=device_creds(self.trust, device_id),
            inbox_prefix=inbox_prefix(device_id),
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.1,
        )
        self.clients.append(nc)
        return nc


@pytest.fixture
async def fleet(tmp_path: Path, graph: KnowledgeGraph) -> AsyncIterator[Fleet]:
    trust = Trust.load_or_create(tmp_path / "trust")
    server = await NatsServer.start(tmp_path / "nats", port=free_port(), auth=trust.server_config())
    hub = await nats.connect(server.url, user_credentials=RawCredentials(trust.hub_creds("t")))
    stop = asyncio.Event()
    responder = KnowledgeResponder(hub, lambda: graph)
    serving = asyncio.create_task(responder.run(stop))
    await hub.flush()
    await graph.ingest(
        [Entity("line:3", "Line 3", "line"), Entity("site:plant-2", 'Plant 2 (Köln) "north"', "site")],
        [
            Fact("line:3", "located_in", T0, SEEN, object="site:plant-2"),
            Fact("line:3", "max_speed_mm_s", T0, SEEN, value=2**53 + 1),
        ],
    )
    f = Fleet(tmp_path, server, trust, hub, stop)
    yield f
    stop.set()
    await serving
    for nc in [*f.clients, hub]:
        await nc.close()
    await server.stop()


def client(store: SqliteStore, nc: Client | None, **kw: float) -> KnowledgeClient:
    return KnowledgeClient(store, "dev-1", lambda: nc, **kw)


@pytest.fixture
def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore.open(tmp_path / "edge.db", device_id="dev-1")
    yield s  # type: ignore[misc]
    s.close()


async def test_a_device_asks_by_name_words_and_gets_the_entitys_facts(
    fleet: Fleet, store: SqliteStore
) -> None:
    nc = await fleet.device("dev-1")
    out = await client(store, nc).ask("a-1", "line 3")
    assert out.ok
    assert out.data["source"] == "hub"
    assert "Line 3 (line:3):" in out.output
    assert "line:3 located_in site:plant-2 (since 2026-05-01)" in out.output
    assert f"line:3 max_speed_mm_s {2**53 + 1}" in out.output  # beyond float precision: exact
    # by id, and unicode and quotes in names round-trip
    out = await client(store, nc).ask("a-1", "site:plant-2")
    assert 'Plant 2 (Köln) "north" (site:plant-2)' in out.output
    # Lucene's operators in the words are only words: no error, no injection
    out = await client(store, nc).ask("a-1", 'line AND "3" OR *:* ~ (')
    assert out.ok, out.output


async def test_unknown_things_are_said_to_be_unknown_and_remembered(fleet: Fleet, store: SqliteStore) -> None:
    nc = await fleet.device("dev-1")
    out = await client(store, nc).ask("a-1", "the moon")
    assert out.ok
    assert "nothing known about 'the moon'" in out.output
    assert store.knowledge_cached("the moon") is not None


async def test_offline_the_answer_is_hub_unreachable_within_the_timeout(
    fleet: Fleet, store: SqliteStore
) -> None:
    nc = await fleet.device("dev-1")
    fleet.stop.set()  # the hub stops answering (its subscription ends); NATS itself is up
    await asyncio.sleep(0.2)
    started = time.monotonic()
    out = await client(store, nc, timeout_s=1.0).ask("a-1", "line 3")
    elapsed = time.monotonic() - started
    assert not out.ok
    assert out.error == "offline"
    assert "hub is unreachable" in out.output
    assert elapsed < 1.5, elapsed
    # no connection at all: at once
    started = time.monotonic()
    out = await client(store, None, timeout_s=1.0).ask("a-1", "line 3")
    assert out.error == "offline"
    assert time.monotonic() - started < 0.1


async def test_the_cache_answers_fresh_questions_and_offline_ones_with_their_age(
    fleet: Fleet, store: SqliteStore
) -> None:
    nc = await fleet.device("dev-1")
    now = [1_000_000.0]
    kc = KnowledgeClient(store, "dev-1", lambda: nc, timeout_s=1.0, cache_s=60, clock=lambda: now[0])
    first = await kc.ask("a-1", "Line  3")
    assert first.data["source"] == "hub"
    now[0] += 30
    again = await kc.ask("a-1", "line 3")  # same question (case and spaces aside), within cache_s
    assert again.data["source"] == "cache"
    assert again.output == first.output
    fleet.stop.set()
    await asyncio.sleep(0.2)
    now[0] += 7200
    stale = await kc.ask("a-1", "line 3")
    assert stale.ok
    assert stale.data["source"] == "stale cache"
    assert stale.output.startswith("(hub unreachable; remembered from 2 h ago)")
    assert "line:3 located_in site:plant-2" in stale.output


async def test_hostile_queries_get_clear_answers_and_the_responder_keeps_serving(
    fleet: Fleet, store: SqliteStore
) -> None:
    nc = await fleet.device("dev-1")
    subject = subjects.knowledge("dev-1")

    async def ask(data: bytes) -> knowledge_pb2.KnowledgeAnswer:
        return K.KnowledgeAnswer.FromString((await nc.request(subject, data, timeout=5)).data)

    good = K.KnowledgeQuery(schema_version=1, device_id="dev-1", entity="line 3")
    cases = {
        b"\xff\x00garbage": "undecodable",
        b"x" * 5000: "too large",
        K.KnowledgeQuery(
            schema_version=9, device_id="dev-1", entity="x"
        ).SerializeToString(): "schema_version",
        K.KnowledgeQuery(schema_version=1, device_id="dev-2", entity="x").SerializeToString(): "device_id",
        K.KnowledgeQuery(schema_version=1, device_id="dev-1", entity="").SerializeToString(): "must be",
        K.KnowledgeQuery(
            schema_version=1, device_id="dev-1", entity="line 3", predicate="DROP ALL"
        ).SerializeToString(): "predicate",
    }
    for data, why in cases.items():
        answer = await ask(data)
        assert answer.status == K.KnowledgeAnswer.STATUS_INVALID, (data[:20], answer)
        assert why in answer.error, (why, answer.error)
    assert (await ask(good.SerializeToString())).status == K.KnowledgeAnswer.STATUS_OK


async def test_a_device_cannot_ask_in_another_devices_name(fleet: Fleet) -> None:
    nc = await fleet.device("dev-1")
    query = K.KnowledgeQuery(schema_version=1, device_id="dev-2", entity="line 3").SerializeToString()
    with pytest.raises(nats.errors.Error):  # the server refuses the publish: no responder answers it
        await nc.request(subjects.knowledge("dev-2"), query, timeout=1.0)


async def test_an_offline_agent_is_told_the_hub_is_unreachable_and_finishes(tmp_path: Path) -> None:
    """The daemon, with a hub configured that is not there: the knowledge tool is offered, its call
    returns "offline" within the timeout, and the agent's next step finishes the goal."""
    cfg = EdgeConfig.model_validate(
        {
            "device": {"id": "dev-1", "data_dir": str(tmp_path / "edge")},
            "hub": {"nats_url": f"nats://127.0.0.1:{free_port()}", "knowledge_timeout_s": 1.0},
            "sandbox": {"mode": "off"},
            "memory": {"episodic": False},
        }
    )
    script = [
        '{"thought": "ask the fleet", "tool": "knowledge", "args": {"about": "line 3"}}',
        '{"thought": "no hub; answer from what I know", "tool": "finish", "args": {"answer": "unknown"}}',
    ]
    async with EdgeDaemon(cfg, brain=FakeBrain(script)) as daemon:
        assert daemon.loop is not None
        assert "knowledge" in daemon.loop.d.registry.names()
        agent = daemon.submit("where is line 3?")
        started = time.monotonic()
        await asyncio.wait_for(daemon.run(until_idle=True), 30)
        elapsed = time.monotonic() - started
        assert daemon.store is not None
        state = daemon.store.load_agent(agent)
        log = daemon.store.mind_log(agent)
    assert state.status == S.AGENT_STATUS_FINISHED, state
    call = next(e for e in log if e.action.tool == "knowledge")
    assert call.observation.error == "offline"
    assert "hub is unreachable" in call.observation.output
    assert elapsed < 10, elapsed
