"""Fleet policy from the hub (issue 20): a real hub subprocess and its nats-server, real edge daemons
enrolled with it, the operator's real ``edgehub policy`` CLI.

A push reaches the devices its selector picks (by label, by id, all), ``policy status`` shows which
version each runs, a rollback is a newer version carrying the earlier text, and a restarted daemon
comes back with the bundle it accepted. A device offline during a push converges when it starts (it
asks the hub, whatever its commands stream still holds). Each bundle a device must not apply
(unsigned, signed by another key, older than the one in force, for another device, not a valid
policy) is refused, reported (dead letter and twin, shown by ``policy status``), and the policy in
force stays. A device's own credentials can neither write a bundle into the hub's buckets nor send a
policy command to another device, nor push one through the API.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import nats
import pytest

from edgehub.edge.app import EdgeDaemon
from edgehub.edge.config import EdgeConfig
from edgehub.edge.uplink.identity import DeviceIdentity
from edgehub.llm.fake import FakeBrain
from edgehub.protocol import subjects
from edgehub.protocol.v1 import commands_pb2, policy_pb2
from edgehub.protocol.v1 import hub_pb2 as H  # noqa: N812 - the house alias
from edgehub.sync.decisions import SigningKey
from edgehub.sync.policies import text_sha256
from edgehub.sync.streams import POLICIES, POLICY_DEVICES
from tests.harness.hub import Hub, ready_hub
from tests.harness.wait import eventually
from tests.integration.test_identity import stub
from tests.integration.test_signed_approvals import last_command, publish_as_hub

C, P = commands_pb2, policy_pb2
OPEN = 'version = 2\n[[rules]]\nid = "everything"\ntools = ["*"]\neffect = "allow"\n'
NO_WRITES = (
    'version = 2\n[[rules]]\nid = "no-writes"\ntools = ["write_file"]\neffect = "deny"\n'
    'reason = "fleet rule"\n[[rules]]\nid = "rest"\ntools = ["*"]\neffect = "allow"\n'
)
INVALID = 'version = 2\n[[rules]]\nid = "odd"\ntools = ["*"]\neffect = "maybe"\n'


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    with ready_hub(tmp_path_factory.mktemp("fleetpolicy"), "hub-fleetpolicy") as running:
        yield running


def _config(device: str, data: Path, labels: dict[str, str] | None = None) -> EdgeConfig:
    return EdgeConfig.model_validate({
        "device": {"id": device, "data_dir": str(data), "labels": labels or {}},
        "tools": {"load_entry_points": False}, "hub": {"heartbeat_s": 0.3},
    })  # fmt: skip


def _idle(prompt: str) -> str:
    return json.dumps({"thought": "done", "tool": "finish", "args": {"answer": "ok"}})


async def enrolled(hub: Hub, device: str, root: Path, labels: dict[str, str] | None = None) -> EdgeConfig:
    data = root / device
    done = await asyncio.to_thread(hub.enroll, device, data)
    assert done.returncode == 0, done.stderr
    return _config(device, data, labels)


@asynccontextmanager
async def running(cfg: EdgeConfig) -> AsyncIterator[EdgeDaemon]:
    async with EdgeDaemon(cfg, brain=FakeBrain(_idle)) as edge:
        task = asyncio.create_task(edge.run())
        try:
            yield edge
        finally:
            edge.request_stop()
            await edge.shutdown()
            task.cancel()


def in_force(edge: EdgeDaemon) -> P.RunningPolicy:
    """What the daemon's twin reports (the engine its gateway decides with)."""
    return edge.report().policy


def decides_version(edge: EdgeDaemon) -> int:
    """The bundle version a decision of the daemon's own policy engine names."""
    assert edge.parts.router.policies is not None
    engine = edge.parts.router.policies.hub_policy.engine
    return engine.decide("write_file", {"path": "x", "content": "y"}).version


async def cli(hub: Hub, *args: str, env: dict[str, str] | None = None) -> str:
    done = await asyncio.to_thread(hub.cli, "policy", *args, env=env)
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout


async def push(hub: Hub, tmp_path: Path, text: str, devices: str) -> int:
    file = tmp_path / f"policy-{text_sha256(text)[:8]}.toml"
    file.write_text(text)
    return int(json.loads(await cli(hub, "push", str(file), "--devices", devices, "--json"))["version"])


async def status(hub: Hub) -> dict[str, dict[str, object]]:
    rows = [json.loads(line) for line in (await cli(hub, "status", "--json")).splitlines()]
    return {row["device_id"]: row for row in rows}


async def until(probe: Callable[[], bool], what: str) -> None:
    await eventually(probe, within=30, what=what)


async def test_push_selects_devices_status_shows_versions_and_rollback_is_a_newer_version(
    hub: Hub, tmp_path: Path
) -> None:
    a = await enrolled(hub, "pi-a", tmp_path, {"site": "plant-a"})
    b = await enrolled(hub, "pi-b", tmp_path, {"site": "plant-a"})
    c = await enrolled(hub, "pi-c", tmp_path, {"site": "plant-b"})
    async with running(a) as ea, running(b) as eb, running(c) as ec:
        await _wait_online(hub, "pi-a", "pi-b", "pi-c")
        v1 = await push(hub, tmp_path, NO_WRITES, "site=plant-a")
        for edge in (ea, eb):
            await until(lambda e=edge: in_force(e).version == v1, f"{edge.cfg.device.id} runs v{v1}")  # type: ignore[misc]
            assert in_force(edge).source == "hub"
            assert in_force(edge).sha256 == text_sha256(NO_WRITES)
            assert decides_version(edge) == v1  # the decisions name the bundle's version
        assert in_force(ec).source == "default"
        assert decides_version(ec) == 0
        await until(lambda: _twin_reports(hub, "pi-a", v1), "the hub sees pi-a's twin at v1")
        rows = await status(hub)
        assert (rows["pi-a"]["state"], rows["pi-a"]["sent_version"]) == ("current", str(v1))
        assert rows["pi-c"]["state"] == "local"

        v2 = await push(hub, tmp_path, OPEN, "all")
        assert v2 == v1 + 1
        for edge in (ea, eb, ec):
            await until(lambda e=edge: in_force(e).version == v2, f"{edge.cfg.device.id} runs v{v2}")  # type: ignore[misc]

        back = json.loads(await cli(hub, "rollback", "--json"))  # to the version before the latest
        assert (int(back["version"]), int(back["rollback_of"])) == (v2 + 1, v1)
        for edge in (ea, eb, ec):
            await until(lambda e=edge: in_force(e).version == v2 + 1, "the rollback in force")  # type: ignore[misc]
            assert in_force(edge).sha256 == text_sha256(NO_WRITES)
        await until(lambda: _twin_reports(hub, "pi-c", v2 + 1), "the hub sees the rollback")
        rows = await status(hub)
        assert {rows[d]["state"] for d in ("pi-a", "pi-b", "pi-c")} == {"current"}
        table = await cli(hub, "status")
        assert "pi-c" in table
        assert f"v{v2 + 1}" in table

        viewer = await asyncio.to_thread(hub.cli, "tokens", "create", "vera", "--role", "viewer")
        as_viewer = {"EDGEHUB_TOKEN": viewer.stdout.strip().splitlines()[-1], "EDGEHUB_TOKEN_FILE": ""}
        assert "pi-a" in await cli(hub, "status", env=as_viewer)
        file = tmp_path / "p.toml"
        file.write_text(OPEN)
        denied = await asyncio.to_thread(
            hub.cli, "policy", "push", str(file), "--devices", "all", env=as_viewer
        )
        assert denied.returncode == 1
        assert "needs role operator" in denied.stderr

    async with EdgeDaemon(a, brain=FakeBrain(_idle)) as again:  # before it connects: the kept bundle
        assert (in_force(again).source, in_force(again).version) == ("hub", v2 + 1)
        assert decides_version(again) == v2 + 1


def _twin_reports(hub: Hub, device: str, version: int) -> bool:
    got = hub.cli("devices", "get", device, "--json")
    policy = json.loads(got.stdout).get("twin", {}).get("policy", {})
    return int(policy.get("version", 0)) == version


async def _wait_online(hub: Hub, *devices: str) -> None:
    async def seen() -> bool:
        listed = await asyncio.to_thread(hub.cli, "devices", "list", "--json")
        found = {json.loads(line)["device_id"]: json.loads(line) for line in listed.stdout.splitlines()}
        return all(found.get(d, {}).get("online") for d in devices)

    for _ in range(300):
        if await seen():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{devices} did not come online")


async def purge_commands(hub: Hub, device: str) -> None:
    nc = await nats.connect(hub.url, user_credentials=hub.creds("purger"))
    try:
        await nc.jetstream().purge_stream(subjects.COMMANDS_STREAM, subject=subjects.commands(device))
    finally:
        await nc.close()


async def test_a_device_offline_during_a_push_converges_when_it_starts(hub: Hub, tmp_path: Path) -> None:
    cfg = await enrolled(hub, "pi-away", tmp_path)
    async with running(cfg) as edge:
        await _wait_online(hub, "pi-away")
        first = await push(hub, tmp_path, OPEN, "pi-away")
        await until(lambda: in_force(edge).version == first, "the first push in force")
    later = await push(hub, tmp_path, NO_WRITES, "pi-away")  # while it is off
    await purge_commands(hub, "pi-away")  # its command gone: only the start's check can bring it
    async with running(cfg) as edge:
        assert in_force(edge).version == first  # the kept bundle, until the hub answers
        await until(lambda: in_force(edge).version == later, "the later push in force after the start")
        assert in_force(edge).sha256 == text_sha256(NO_WRITES)
    rows = await status(hub)
    assert rows["pi-away"]["sent_version"] == str(later), rows


async def dead_letters(hub: Hub, device: str, count: int) -> list[str]:
    nc = await nats.connect(hub.url, user_credentials=hub.creds("reader"))
    try:
        sub = await nc.jetstream().subscribe(subjects.device_deadletter(device), ordered_consumer=True)
        return [(await sub.next_msg(timeout=15)).headers["Edgehub-Reason"] for _ in range(count)]
    finally:
        await nc.close()


def carrying(cmd: C.Command, signed: P.SignedPolicy, device: str) -> C.Command:
    out = C.Command()
    out.CopyFrom(cmd)
    out.device_id = device
    out.apply_policy.policy.CopyFrom(signed)
    return out


async def test_each_bad_bundle_is_refused_reported_and_the_policy_in_force_stays(
    hub: Hub, tmp_path: Path
) -> None:
    device = "pi-guarded"
    cfg = await enrolled(hub, device, tmp_path)
    async with running(cfg) as edge:
        await _wait_online(hub, device)
        old = await push(hub, tmp_path, OPEN, device)
        await until(lambda: in_force(edge).version == old, "the first bundle in force")
        old_cmd = await last_command(hub, device)
        good = await push(hub, tmp_path, NO_WRITES, device)
        await until(lambda: in_force(edge).version == good, "the second bundle in force")
        good_cmd = await last_command(hub, device)
        await push(hub, tmp_path, OPEN, "pi-elsewhere")  # a device that never ran
        elsewhere = await last_command(hub, "pi-elsewhere")

        signed = good_cmd.apply_policy.policy
        unsigned = P.SignedPolicy(bundle=signed.bundle)
        bundle = P.PolicyBundle.FromString(signed.bundle)
        bundle.version, bundle.text = good + 100, OPEN
        bundle.sha256 = text_sha256(OPEN)
        other_key = SigningKey.load_or_create(tmp_path / "not-the-hub")
        data = bundle.SerializeToString()
        forged = P.SignedPolicy(bundle=data, signature=other_key.signature(data), key_id=other_key.key_id)
        as_hub_key = P.SignedPolicy(bundle=data, signature=other_key.signature(data), key_id=signed.key_id)
        await publish_as_hub(
            hub,
            carrying(good_cmd, unsigned, device),
            carrying(good_cmd, forged, device),
            carrying(good_cmd, as_hub_key, device),
            old_cmd,
            carrying(elsewhere, elsewhere.apply_policy.policy, device),
        )
        reasons = await dead_letters(hub, device, 5)
        assert "without the hub's signature" in reasons[0]
        assert "signed by key" in reasons[1]
        assert "signature is not the hub's" in reasons[2]
        assert f"policy bundle {old} is older than version {good} in force" in reasons[3]
        assert f"is for device pi-elsewhere, not {device}" in reasons[4]
        assert (in_force(edge).version, in_force(edge).sha256) == (good, text_sha256(NO_WRITES))
        assert decides_version(edge) == good

        bad = await push(hub, tmp_path, INVALID, device)  # the hub reads TOML; the edge reads policies
        await until(lambda: in_force(edge).refused_version == bad, "the invalid bundle refused")
        assert "not a policy this edge reads" in in_force(edge).refused_reason
        assert "rules.0.effect" in in_force(edge).refused_reason
        assert in_force(edge).version == good
        verdict = edge.parts.router.policies.hub_policy.engine.decide("write_file", {"path": "x"})  # type: ignore[union-attr]
        assert (verdict.effect, verdict.rule) == ("deny", "no-writes")  # still the bundle in force

        async def refused_in_status() -> bool:
            row = (await status(hub)).get(device, {})
            return row.get("state") == "refused"

        for _ in range(100):
            if await refused_in_status():
                break
            await asyncio.sleep(0.2)
        row = (await status(hub))[device]
        assert row["state"] == "refused", row
        assert "not a policy this edge reads" in row["running"]["refused_reason"]  # type: ignore[index]

    with pytest.raises(AssertionError):  # the hub refuses what is not TOML with a version at all
        await push(hub, tmp_path, "rules = [", device)


async def test_a_devices_credentials_cannot_write_a_bundle_or_command_another_device(
    hub: Hub, tmp_path: Path
) -> None:
    device = "pi-outsider"
    cfg = await enrolled(hub, device, tmp_path)
    async with running(cfg) as edge:
        await _wait_online(hub, device)
        version = await push(hub, tmp_path, NO_WRITES, f"{device},pi-victim")
        await until(lambda: in_force(edge).version == version, "the bundle in force")
    identity = DeviceIdentity.load(cfg.identity_dir, device)
    assert identity is not None
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())

    victim = await last_command(hub, "pi-victim")
    mine = await nats.connect(
        list(identity.nats_urls), user_credentials=str(identity.creds),
        inbox_prefix=identity.inbox_prefix, error_cb=on_error,
    )  # fmt: skip
    try:
        redirected = carrying(victim, victim.apply_policy.policy, "pi-victim")
        redirected.command_id = "cmd-outsider"
        await mine.publish(subjects.commands("pi-victim"), redirected.SerializeToString())
        await mine.publish(f"$KV.{POLICIES.name}.999", b"a push of my own")
        await mine.publish(f"$KV.{POLICY_DEVICES.name}.pi-victim", b"a bundle of my own")
        await mine.flush()
        await eventually(lambda: sum("permissions violation" in e for e in errors) >= 3, within=10)
    finally:
        await mine.close()
    hub_nc = await nats.connect(hub.url, user_credentials=hub.creds("auditor"))
    try:
        pushes = await hub_nc.jetstream().key_value(POLICIES.name)
        assert "999" not in await pushes.keys()
        last = await hub_nc.jetstream().get_last_msg(subjects.COMMANDS_STREAM, subjects.commands("pi-victim"))
        assert C.Command.FromString(last.data).command_id == victim.command_id
    finally:
        await hub_nc.close()

    cert = ((cfg.identity_dir / "device.pem").read_bytes(), (cfg.identity_dir / "device.key").read_bytes())
    as_device = stub(hub, cert=cert, addr=identity.device_api)[1]
    push_req = H.PushPolicyRequest(text=OPEN, target=H.PolicyTarget(all=True))
    with pytest.raises(grpc.RpcError) as refused:
        as_device.PushPolicy(push_req, timeout=10)  # type: ignore[attr-defined]
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    own = as_device.GetPolicy(H.GetPolicyRequest(), timeout=10)  # type: ignore[attr-defined]
    assert P.PolicyBundle.FromString(own.bundle).device_id == device  # its own, never another's
