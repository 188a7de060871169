"""The hub's parity gate (``fleet/parity.py``) and how shadow steps count into a rollout's record
(``fleet/rollouts.py``): divergence of one step, the window's decision, waves, the steps that do not
count (another device's, a redelivery, another model's), and the commands the service sends for a
rollout's waves and its rollback (on the fake JetStream)."""

from __future__ import annotations

import math

import pytest

from edgehub.hub.errors import Refused
from edgehub.hub.fleet import parity
from edgehub.hub.fleet.control import Commands
from edgehub.hub.fleet.rollouts import RolloutService, count_steps, halt_late, roll_back
from edgehub.hub.fleet.scopes import Scope, ScopeGuard
from edgehub.protocol.v1 import commands_pb2, events_pb2, hub_pb2, models_pb2, twin_pb2
from edgehub.sync.fake import FakeJetStream

M = models_pb2
NEW = "b" * 64


def unit(*xs: float) -> list[float]:
    norm = math.sqrt(sum(x * x for x in xs))
    return [x / norm for x in xs]


def step(
    tool: str = "write_file",
    args: str = '{"path": "a.txt"}',
    shadow_tool: str = "write_file",
    shadow_args: str = '{"path": "a.txt"}',
    **more: object,
) -> M.ShadowStep:
    return M.ShadowStep(
        current_tool=tool, current_args=args, shadow_tool=shadow_tool, shadow_args=shadow_args,
        shadow_model=NEW, **more,  # type: ignore[arg-type]
    )  # fmt: skip


def test_another_tool_or_an_unusable_proposal_diverges_fully() -> None:
    assert parity.divergence(step(shadow_tool="read_file")) == 1.0
    assert parity.divergence(step(shadow_error="action is not valid JSON")) == 1.0


def test_same_call_and_same_thought_does_not_diverge() -> None:
    same = unit(1, 2, 3)
    assert parity.divergence(step(current_embedding=same, shadow_embedding=same)) == pytest.approx(
        0.0, abs=1e-6
    )
    assert parity.divergence(step(current_thought="x", shadow_thought="x")) == 0.0


def test_arguments_and_thoughts_each_weigh_half() -> None:
    # one of two argument names differs: 0.5 of the args part; orthogonal thoughts: the whole thought part
    s = step(
        args='{"path": "a.txt", "content": "x"}',
        shadow_args='{"path": "a.txt", "content": "y"}',
        current_embedding=unit(1, 0),
        shadow_embedding=unit(0, 1),
    )
    assert parity.divergence(s) == pytest.approx(0.5 * 0.5 + 0.5 * 1.0)
    close = step(current_embedding=unit(1, 0.1), shadow_embedding=unit(1, 0.2))
    assert 0 < parity.divergence(close) < 0.01
    assert parity.args_distance("{}", "{}") == 0.0
    assert parity.args_distance('{"a": 1}', "not json") == 1.0


def test_without_embeddings_different_thoughts_count_fully() -> None:
    assert parity.divergence(step(current_thought="write it", shadow_thought="save it")) == 0.5


def wave(*scores: float) -> M.RolloutWave:
    w = M.RolloutWave(state="shadowing")
    for i, s in enumerate(scores):
        parity.count(w, M.RolloutExample(step=i, divergence=s))
    return w


def test_the_window_promotes_within_the_threshold_and_halts_above_it() -> None:
    assert parity.verdict(wave(0.1, 0.2), window=3, threshold=0.3) == ""
    assert parity.verdict(wave(0.1, 0.2, 0.3), window=3, threshold=0.3) == "promote"
    assert parity.verdict(wave(0.1, 0.2, 0.7), window=3, threshold=0.3) == "halt"


def test_a_wave_halts_early_once_no_step_could_bring_it_back() -> None:
    assert parity.verdict(wave(1.0), window=3, threshold=0.3) == "halt"  # 1.0 > 0.9 already
    assert parity.verdict(wave(0.8), window=3, threshold=0.3) == ""


def test_a_wave_keeps_its_most_divergent_examples() -> None:
    w = wave(*[i / 10 for i in range(10)])
    assert [round(e.divergence, 1) for e in w.examples] == [0.9, 0.8, 0.7, 0.6, 0.5]
    assert w.divergence == pytest.approx(0.45)


def test_waves_are_cumulative_counts_shares_or_all() -> None:
    devices = [f"d{i}" for i in range(10)]
    assert parity.plan_waves(devices, "1,50%,all") == [["d0"], devices[1:5], devices[5:]]
    assert parity.plan_waves(devices, "all") == [devices]
    assert parity.plan_waves(devices, "") == [devices]
    assert parity.plan_waves(devices, "2,2,5") == [devices[:2], devices[2:5], devices[5:]]
    assert parity.plan_waves(["a"], "1,50%,all") == [["a"]]
    for bad in ("1,lots", "0", "-1", "150%", "1,,2"):
        with pytest.raises(parity.BadWaves):
            parity.plan_waves(devices, bad)


def record(window: int = 2, threshold: float = 0.3) -> M.RolloutRecord:
    r = M.RolloutRecord(rollout_id="r-1", sha256=NEW, window=window, threshold=threshold, state="shadowing")
    r.waves.add(device_ids=["a", "b"], state="shadowing")
    r.waves.add(device_ids=["c"], state="pending")
    return r


def event(device: str, seq: int, s: M.ShadowStep, rollout: str = "r-1") -> events_pb2.EdgeEvent:
    e = events_pb2.EdgeEvent(device_id=device, agent_id="ag", seq=seq)
    e.shadow_step.CopyFrom(s)
    e.shadow_step.rollout_id = rollout
    return e


def test_steps_of_devices_outside_the_wave_a_redelivery_or_another_model_do_not_count() -> None:
    r = record()
    count_steps(
        r, [event("c", 1, step()), event("a", 5, step()), event("a", 5, step()), event("a", 4, step())]
    )
    other = step()
    other.shadow_model = "c" * 64
    count_steps(r, [event("b", 1, other)])
    assert (r.waves[0].steps, r.ignored_steps) == (1, 2)  # c is in the next wave; b shadowed another model


def test_a_promoted_wave_starts_the_next_and_the_last_promotes_the_rollout() -> None:
    r = record()
    count_steps(r, [event("a", 1, step()), event("b", 1, step())])
    assert (r.waves[0].state, r.waves[1].state, r.current_wave, r.state) == (
        "promoted",
        "shadowing",
        1,
        "shadowing",
    )
    assert "wave 1 of 2 promoted" in r.waves[0].decision
    count_steps(r, [event("a", 2, step())])  # a's wave is decided: not counted again
    assert r.ignored_steps == 1
    count_steps(r, [event("c", 1, step()), event("c", 2, step())])
    assert (r.state, r.current_wave) == ("promoted", 2)


def test_a_divergent_wave_halts_the_rollout_and_later_steps_are_ignored() -> None:
    r = record()
    count_steps(r, [event("a", 1, step(shadow_tool="read_file"))])
    assert (r.state, r.waves[0].state, r.waves[1].state) == ("halted", "halted", "pending")
    assert "halted: mean divergence 1.000 over 1 steps, threshold 0.300" in r.decision
    assert r.waves[0].examples[0].shadow_tool == "read_file"
    count_steps(r, [event("b", 1, step())])
    assert r.ignored_steps == 1


def test_a_rollback_names_devices_whose_earlier_model_is_unknown() -> None:
    r = record()
    r.waves[0].previous["a"] = "a" * 64
    count_steps(r, [event("a", 1, step()), event("b", 1, step())])
    roll_back(r, "operator:ann")
    assert r.state == "rolled_back"
    assert [w.state for w in r.waves] == ["rolled_back", "rolled_back"]
    assert r.decision == f"rolled back by operator:ann; no earlier model known for b (they keep {NEW[:12]})"


def test_a_wave_past_its_timeout_halts_with_the_steps_it_had() -> None:
    r = record()
    r.waves[0].started_at = 1000.0
    count_steps(r, [event("a", 1, step())])
    assert not halt_late(r, now=1000.0 + 60, timeout_s=60)  # not past it yet
    assert r.state == "shadowing"
    assert halt_late(r, now=1000.0 + 61, timeout_s=60)
    assert (r.state, r.waves[0].state, r.waves[1].state) == ("halted", "halted", "pending")
    assert r.decision.startswith("wave 1 of 2 halted: 1 of 2 shadow steps in 60 s")
    assert not halt_late(r, now=1e9, timeout_s=60)  # decided: nothing more to time out


class _View:
    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self.labels: dict[str, str] = {}
        self.hub_labels: dict[str, str] = {}


def service(js: FakeJetStream) -> RolloutService:
    async def views() -> list[_View]:
        return [_View("a"), _View("b")]

    async def twins() -> list[hub_pb2.Device]:
        return [hub_pb2.Device(device_id="a", twin=twin_pb2.DeviceTwin(model_sha256="e" * 64))]

    async def labels(device_id: str) -> dict[str, str]:
        return {}

    scopes = ScopeGuard(labels, lambda d: {}, None)  # type: ignore[arg-type]
    commands = Commands(js, None, None, 0)  # type: ignore[arg-type]
    return RolloutService(js, commands, views, twins, scopes)  # type: ignore[arg-type]


def sent(js: FakeJetStream) -> list[tuple[str, str, str]]:
    """(device, kind, sha256 and stop) of each command published."""
    out = []
    for p in js.published:
        cmd = commands_pb2.Command.FromString(p.data)
        kind = cmd.WhichOneof("body") or ""
        body = getattr(cmd, kind)
        out.append(
            (cmd.device_id, kind + (" stop" if kind == "shadow_model" and body.stop else ""), body.sha256[:1])
        )
    return out


async def test_waves_shadow_in_turn_promotions_are_sent_and_a_rollback_sends_devices_back() -> None:
    js = FakeJetStream()
    rollouts = service(js)
    req = hub_pb2.StartRolloutRequest(
        sha256=NEW, target=hub_pb2.PolicyTarget(all=True), waves="1,all", window=2
    )
    started = await rollouts.start(req, "operator:ann", Scope())
    assert [list(w.device_ids) for w in started.waves] == [["a"], ["b"]]
    assert sent(js) == [("a", "shadow_model", "b")]
    rid = started.rollout_id
    await rollouts.apply([event("a", 1, step(), rid), event("a", 2, step(), rid)])
    assert sent(js)[1:] == [
        ("a", "shadow_model stop", "b"),
        ("a", "use_model", "b"),
        ("b", "shadow_model", "b"),
    ]
    # a's wave is decided and zz is in none (counted in the record); r-x does not exist (counted here)
    await rollouts.apply(
        [event("a", 3, step(), rid), event("zz", 1, step(), rid), event("b", 1, step(), "r-x")]
    )
    assert rollouts.ignored == 1
    with pytest.raises(Refused, match="undecided: roll it back first"):
        await rollouts.start(req, "operator:ann", Scope())
    js.published.clear()
    back = await rollouts.rollback(started.rollout_id, "operator:bo", Scope())
    assert back.state == "rolled_back"
    assert sent(js) == [
        ("b", "shadow_model stop", "b"),
        ("a", "use_model", "e"),
    ]  # a's model before the rollout
    status = (await rollouts.status(started.rollout_id, Scope())).rollouts[0]
    assert (status.ignored_steps, status.waves[1].previous["b"]) == (2, "")
    with pytest.raises(Refused, match="not a SHA-256"):
        await rollouts.start(hub_pb2.StartRolloutRequest(sha256="x", target=req.target), "op", Scope())
    with pytest.raises(Refused, match="no rollout r-none"):
        await rollouts.status("r-none", Scope())
