"""The pieces of escalation that need no network: the confidence tracker, the cache key and cache, the
fair queue, the hub's checks and cache, the edge client's cache and masking."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest

from edgehub.edge.config import EscalationConfig as EdgeEscalationConfig
from edgehub.edge.safety.pii import Scrubber
from edgehub.edge.safety.vault import VaultKey
from edgehub.edge.uplink.escalation import EscalationClient
from edgehub.hub.config import EscalationConfig, PlannerConfig
from edgehub.hub.escalation import EscalationService, FairQueue
from edgehub.hub.escalation.service import Pending, Refused
from edgehub.hub.hubmodel import HubModel
from edgehub.llm.confidence import ToolConfidence
from edgehub.llm.fake import FakeBrain
from edgehub.protocol.v1 import models_pb2
from edgehub.sync.escalation import ESCALATION_VERSION, AnswerCache, CachedAnswer, context_key, schema_text

M = models_pb2


# the confidence of the "tool" value ---------------------------------------------------------------
def follow(pieces: list[tuple[str, float]]) -> tuple[ToolConfidence, list[str]]:
    track, measured = ToolConfidence(), []
    for piece, p in pieces:
        inside = track.in_value()
        if inside:
            measured.append(piece)
        track.add(piece.encode(), math.log(p) if inside else None)
    return track, measured


def test_only_the_tool_values_tokens_are_measured() -> None:
    pieces = [('{"thought": "', 0.9), ('"tool', 0.5), ('"', 0.9), (":", 0.9), (' "', 0.5), ("read", 0.2),
              ("_file", 0.8), ('",', 0.9), (' "args": {"tool": "', 0.01), ('x"}}', 0.01)]  # fmt: skip
    track, measured = follow(pieces)
    assert measured == [' "', "read", "_file", '",']
    assert track.value == pytest.approx(0.2)  # the first token that spells part of the name


def test_a_quoted_tool_inside_a_string_is_not_the_key() -> None:
    track, measured = follow([('{"thought": "say \\"tool\\": \\"x', 0.9), ('\\""}', 0.9)])
    assert measured == []
    assert track.value is None


# the cache key and the cache ----------------------------------------------------------------------
def test_the_key_changes_with_anything_the_answer_depends_on() -> None:
    base = ("prompt", schema_text({"a": 1}), 64, "model-1")
    key = context_key(*base)
    assert context_key("prompt", schema_text({"a": 1}), 64, "model-1") == key
    others = [("prompt ", *base[1:]), ("prompt", schema_text({"a": 2}), 64, "model-1"),
              (*base[:2], 65, "model-1"), (*base[:3], "model-2")]  # fmt: skip
    assert len({context_key(*o) for o in others} | {key}) == 5
    assert context_key("ab", "c", 1, "m") != context_key("a", "bc", 1, "m")  # parts cannot run together
    assert schema_text({"b": 1, "a": 2}) == schema_text({"a": 2, "b": 1})


def test_the_cache_keeps_the_most_recently_used_and_counts_hits() -> None:
    cache = AnswerCache(2)
    answer = CachedAnswer("x", 1, 1, "m")
    cache.put("a", answer)
    cache.put("b", answer)
    assert cache.get("a") is answer  # a is now the most recent
    cache.put("c", answer)
    assert cache.get("b") is None
    assert cache.get("c") is answer
    assert len(cache) == 2
    assert (cache.hits, cache.misses) == (2, 1)
    assert cache.hit_rate == pytest.approx(2 / 3)
    off = AnswerCache(0)
    off.put("a", answer)
    assert off.get("a") is None


# the fair queue -----------------------------------------------------------------------------------
def test_a_flooding_device_is_served_in_turn_with_the_others() -> None:
    q: FairQueue[str] = FairQueue(per_device=10, total=100)
    for i in range(5):
        assert q.put("flood", f"f{i}")
    assert q.put("calm-1", "c1")
    assert q.put("calm-2", "c2")
    order = [q.take() for _ in range(7)]
    assert [t[1] for t in order if t] == ["f0", "c1", "c2", "f1", "f2", "f3", "f4"]
    assert q.take() is None
    assert len(q) == 0


def test_the_queue_refuses_beyond_its_bounds() -> None:
    q: FairQueue[int] = FairQueue(per_device=2, total=3)
    assert q.put("a", 1)
    assert q.put("a", 2)
    assert not q.put("a", 3)  # its own FIFO is full
    assert q.put("b", 1)
    assert not q.put("c", 1)  # the queue is full
    assert len(q) == 3
    assert q.waiting("a") == 2


async def test_get_waits_for_an_item() -> None:
    q: FairQueue[int] = FairQueue(per_device=1, total=1)
    getting = asyncio.create_task(q.get())
    await asyncio.sleep(0.01)
    assert not getting.done()
    q.put("a", 7)
    assert await asyncio.wait_for(getting, 1) == ("a", 7)


# the hub's checks and cache -----------------------------------------------------------------------
def service(brain: FakeBrain | None = None, **cfg: int) -> EscalationService:
    model = HubModel(PlannerConfig(), brain=brain or FakeBrain(lambda p: '{"tool": "finish"}'))
    return EscalationService(None, model, EscalationConfig(**cfg))  # type: ignore[arg-type]


def request(**kw: object) -> models_pb2.EscalateRequest:
    fields: dict[str, object] = {"schema_version": ESCALATION_VERSION, "agent_id": "a-1", "prompt": "p",
                                 "max_tokens": 64, "json_schema": '{"type": "object"}'}  # fmt: skip
    return M.EscalateRequest(**(fields | kw))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\xff\x00garbage", "undecodable"),
        (request(schema_version=9).SerializeToString(), "unknown schema_version 9"),
        (request(agent_id="").SerializeToString(), "agent_id"),
        (request(prompt="x" * 1001).SerializeToString(), "too large: prompt of 1001 characters"),
        (request(json_schema="{" * 1001).SerializeToString(), "too large: schema"),
        (request(json_schema="[1]").SerializeToString(), "not a JSON object"),
        (request(json_schema="{").SerializeToString(), "not JSON"),
        (request(max_tokens=0).SerializeToString(), "max_tokens 0 is outside 1..128"),
        (request(max_tokens=129).SerializeToString(), "max_tokens 129"),
    ],
)
def test_bad_requests_are_refused_saying_why(data: bytes, why: str) -> None:
    with pytest.raises(Refused) as err:
        service(max_prompt_chars=1000, max_schema_chars=1000, max_tokens=128).check(data)
    assert why in err.value.error


async def test_the_hub_caches_by_its_own_model_and_a_changed_context_misses() -> None:
    brain = FakeBrain(lambda p: f'{{"tool": "finish", "for": "{p}"}}')
    svc = service(brain)
    req, schema = svc.check(request(prompt="step 1").SerializeToString())
    assert svc.cached(req, schema) is None
    out, outcome = await svc._answer(Pending(None, req, schema, asyncio.get_running_loop().time()))  # type: ignore[arg-type]
    assert outcome == "answered"
    assert json.loads(out.text)["for"] == "step 1"
    assert out.model == "fake"
    hit = svc.cached(req, schema)
    assert hit is not None
    assert hit.text == out.text
    for changed in (request(prompt="step 1 "), request(prompt="step 1", max_tokens=65),
                    request(prompt="step 1", json_schema='{"type": "array"}')):  # fmt: skip
        assert svc.cached(*svc.check(changed.SerializeToString())) is None
    assert len(brain.prompts) == 1


async def test_a_request_past_its_deadline_is_not_computed() -> None:
    brain = FakeBrain(lambda p: "{}")
    svc = service(brain)
    req, schema = svc.check(request(deadline_ms=100).SerializeToString())
    import time

    out, outcome = await svc._answer(Pending(None, req, schema, time.monotonic() - 1.0))  # type: ignore[arg-type]
    assert outcome == "deadline"
    assert out.error.startswith("deadline: waited")
    assert brain.prompts == []


# the edge client's cache and masking --------------------------------------------------------------
async def test_the_edge_cache_answers_the_same_step_and_misses_a_changed_one_or_a_new_hub_model() -> None:
    client = EscalationClient(EdgeEscalationConfig(enabled=True), "dev-1", lambda: None)
    client.hub_model = "hub-1"
    client.cache.put(client.key("p", {"a": 1}, 64), CachedAnswer('{"tool": "finish"}', 5, 5, "hub-1"))
    ask = {"agent_id": "a", "step": 0, "reason": "confidence", "confidence": 0.1}
    hit = await client.ask(prompt="p", schema={"a": 1}, max_tokens=64, **ask)  # type: ignore[arg-type]
    assert not isinstance(hit, str)
    assert hit.source == "device cache"
    assert hit.tokens == 0
    miss = await client.ask(prompt="p2", schema={"a": 1}, max_tokens=64, **ask)  # type: ignore[arg-type]
    assert miss == "no connection to the hub"
    client.hub_model = "hub-2"
    assert await client.ask(prompt="p", schema={"a": 1}, max_tokens=64, **ask) == "no connection to the hub"  # type: ignore[arg-type]


def test_the_hubs_answer_gets_back_what_the_prompt_had_masked(tmp_path: Path) -> None:
    scrubber = Scrubber(VaultKey.load_or_create(tmp_path / "vault.key"))
    client = EscalationClient(EdgeEscalationConfig(enabled=True), "dev-1", lambda: None, scrubber=scrubber)
    sealed: list = []  # type: ignore[type-arg]
    masked = scrubber.mask("mail bob@example.com now", sealed)
    assert "bob@example.com" not in masked
    token = sealed[0].token
    assert client._unmask(f'{{"to": "{token}"}}', sealed) == '{"to": "bob@example.com"}'


# the confidence crosses the model worker's process boundary ---------------------------------------
def test_the_workers_reply_carries_the_confidence_and_an_older_worker_none() -> None:
    from dataclasses import asdict

    from edgehub.edge.worker.client import _completion
    from edgehub.edge.worker.server import FrameError
    from edgehub.llm import Completion

    done = Completion("{}", 10, 2, 3, 1.0, 2.0, "stop", confidence=0.25)
    assert _completion(json.loads(json.dumps({"ok": True, **asdict(done)}))) == done
    older = {k: v for k, v in asdict(done).items() if k != "confidence"}
    assert _completion(older).confidence is None
    with pytest.raises(FrameError):
        _completion({**asdict(done), "confidence": "high"})


# policy: a rule that wants the hub's model --------------------------------------------------------
def test_a_version_3_rule_may_ask_for_the_hubs_model_and_an_older_file_may_not() -> None:
    from edgehub.edge.errors import ConfigError
    from edgehub.edge.safety.policy import Policy

    text = """version = 3
[[rules]]
id = "hard-deletes"
tools = ["run_command"]
args = { command = ["re:^rm "] }
effect = "allow"
escalate = true

[[rules]]
id = "rest"
tools = ["*"]
effect = "allow"
"""
    policy = Policy.parse(text, source="test")
    assert policy.decide("run_command", {"command": "rm -r build"}).escalate
    assert not policy.decide("run_command", {"command": "ls"}).escalate
    with pytest.raises(ConfigError, match="escalate` needs version = 3"):
        Policy.parse(text.replace("version = 3", "version = 2"), source="test")
