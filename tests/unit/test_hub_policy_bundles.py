"""Fleet policy bundles on the device (``edgehub.sync.policies``, ``edgehub.edge.safety.hubpolicy``):
what is applied, what is refused and why, what is kept across a restart, and that the local file
stops counting once a hub bundle is in force. Real keys, real files; no hub (the integration test
``test_fleet_policy`` has one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgehub.edge.agent.tools.base import ToolContext
from edgehub.edge.agent.tools.builtins import WRITE_FILE
from edgehub.edge.safety.approvals import PolicyAdmission
from edgehub.edge.safety.hubpolicy import HubPolicy
from edgehub.edge.safety.policy import PolicyEngine
from edgehub.edge.store.sqlite import SqliteStore
from edgehub.protocol.v1 import agent_pb2, policy_pb2
from edgehub.sync.decisions import HubKey, SigningKey
from edgehub.sync.policies import PolicyRefused, sign_bundle, text_sha256

P = policy_pb2
DEVICE = "pi-1"
OPEN = 'version = 2\n[[rules]]\nid = "open"\ntools = ["*"]\neffect = "allow"\n'
SHUT = 'version = 2\n[[rules]]\nid = "shut"\ntools = ["*"]\neffect = "deny"\n'
LOCAL = 'version = 2\n[[rules]]\nid = "local"\ntools = ["*"]\neffect = "needs_approval"\n'


@pytest.fixture
def hub_key(tmp_path: Path) -> SigningKey:
    return SigningKey.load_or_create(tmp_path / "hub")


def bundle(key: SigningKey, version: int, text: str = OPEN, device: str = DEVICE) -> P.SignedPolicy:
    return sign_bundle(key, P.PolicyBundle(version=version, text=text, device_id=device, pushed_by="op"))


def device(tmp_path: Path, *, enabled: bool = True) -> tuple[HubPolicy, Path]:
    local = tmp_path / "local.toml"
    if not local.exists():
        local.write_text(LOCAL)
    engine = PolicyEngine(local)
    return HubPolicy(engine, tmp_path / "data" / "policy", DEVICE, enabled=enabled), local


def public(key: SigningKey) -> HubKey:
    return HubKey.from_raw(key.public_key)


def test_an_accepted_bundle_wins_over_the_local_file_and_is_kept_across_a_restart(
    tmp_path: Path, hub_key: SigningKey
) -> None:
    hub, local = device(tmp_path)
    assert hub.engine.decide("t", {}).rule == "local"
    assert hub.apply(bundle(hub_key, 3), public(hub_key)) is True
    verdict = hub.engine.decide("t", {})
    assert (verdict.rule, verdict.version) == ("open", 3)
    local.write_text(SHUT + "\n# edited\n")  # the file no longer counts
    assert hub.engine.decide("t", {}).rule == "open"
    running = hub.running()
    assert (running.source, running.version, running.sha256) == ("hub", 3, text_sha256(OPEN))
    assert hub.apply(bundle(hub_key, 3), public(hub_key)) is False  # the same bundle again

    again, _ = device(tmp_path)
    assert again.engine.decide("t", {}).rule == "shut"  # before the kept bundle is loaded
    again.load(public(hub_key))
    assert (again.engine.decide("t", {}).rule, again.running().version) == ("open", 3)


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda k, o: P.SignedPolicy(bundle=bundle(k, 9).bundle), "without the hub's signature"),
        (lambda k, o: bundle(o, 9), "signed by key"),
        (
            lambda k, o: P.SignedPolicy(
                bundle=bundle(k, 9).bundle, signature=o.signature(bundle(k, 9).bundle), key_id=k.key_id
            ),
            "signature is not the hub's",
        ),
        (lambda k, o: bundle(k, 4), "policy bundle 4 is older than version 5 in force"),
        (lambda k, o: bundle(k, 5, SHUT), "policy bundle 5 differs from the version 5 in force"),
        (lambda k, o: bundle(k, 9, device="pi-2"), "is for device pi-2, not pi-1"),
        (lambda k, o: bundle(k, 9, OPEN.replace("allow", "maybe")), "rules.0.effect"),
        (lambda k, o: bundle(k, 9, "version = 7\n"), "policy version 7 is not one this edgehub reads"),
    ],
)
def test_a_bad_bundle_is_refused_with_its_reason_and_the_policy_in_force_stays(
    tmp_path: Path, hub_key: SigningKey, make: object, why: str
) -> None:
    hub, _ = device(tmp_path)
    hub.apply(bundle(hub_key, 5), public(hub_key))
    other = SigningKey.load_or_create(tmp_path / "other")
    with pytest.raises(PolicyRefused) as refused:
        hub.apply(make(hub_key, other), public(hub_key))  # type: ignore[operator]
    assert why in refused.value.reason
    running = hub.running()
    assert (running.version, running.sha256) == (5, text_sha256(OPEN))
    assert why in running.refused_reason
    assert hub.engine.decide("t", {}).rule == "open"


def test_a_tampered_kept_bundle_is_not_loaded(tmp_path: Path, hub_key: SigningKey) -> None:
    hub, _ = device(tmp_path)
    hub.apply(bundle(hub_key, 2), public(hub_key))
    kept = hub.path.read_bytes()
    hub.path.write_bytes(kept.replace(b"allow", b"alloW"))
    again, _ = device(tmp_path)
    again.load(public(hub_key))
    assert again.running().source == "file"
    assert again.running().refused_reason


def test_with_fleet_policy_off_the_device_is_local_only(tmp_path: Path, hub_key: SigningKey) -> None:
    hub, _ = device(tmp_path)
    hub.apply(bundle(hub_key, 2), public(hub_key))
    off, _ = device(tmp_path, enabled=False)
    off.load(public(hub_key))
    assert off.engine.decide("t", {}).rule == "local"
    with pytest.raises(PolicyRefused, match="fleet_policy = false"):
        off.apply(bundle(hub_key, 3), public(hub_key))
    assert off.running().refused_version == 3


ASK = 'version = 2\n[[rules]]\nid = "ask"\ntools = ["write_file"]\neffect = "needs_approval"\n'


async def test_denials_and_held_calls_name_the_bundles_version(tmp_path: Path, hub_key: SigningKey) -> None:
    hub, _ = device(tmp_path)
    store = SqliteStore.open(tmp_path / "edge.db", device_id=DEVICE)
    try:
        admission = PolicyAdmission(hub.engine, store)
        call = agent_pb2.ToolCall(tool="write_file", args_json="{}")
        ctx = ToolContext("a1", 0, "a1/0", tmp_path, notes=None)  # type: ignore[arg-type]
        for version, text, effect in ((4, SHUT, "deny"), (5, ASK, "needs_approval")):
            hub.apply(bundle(hub_key, version, text), public(hub_key))
            decision = (await admission.admit(call, WRITE_FILE, {}, ctx)).to_proto()
            assert (decision.effect, decision.policy_version) == (effect, version)
            assert decision.policy_digest == text_sha256(text)[:12]
    finally:
        store.close()
