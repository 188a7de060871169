"""Approvals come from the hub (issue 17), as an attacker tries them: a real hub subprocess and its
nats-server, and a real edge daemon enrolled with it whose agent waits for an approval.

The attacker holds the device's own NATS credentials (NATS refuses it the command subject), or can
publish commands like a hub process (what a site's leaf node, or a stolen hub credential, can): it
sends a decision without a signature, one signed by another key, a hub-signed one with its approver
changed, one the hub signed for another device, and replays the one that resolved the call. Each is
refused or changes nothing; the approval stays pending until a real ``DecideApproval`` resolves it,
recorded under the calling token's identity. The device had no copy of the hub's key (enrolled before
the hub signed decisions): it fetches it over the device API.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import nats
import pytest

from edgehub.edge.app import EdgeDaemon
from edgehub.edge.config import EdgeConfig
from edgehub.edge.store.base import EdgeStore
from edgehub.edge.uplink.identity import DeviceIdentity
from edgehub.llm.fake import FakeBrain
from edgehub.protocol import subjects
from edgehub.protocol.v1 import agent_pb2, commands_pb2
from edgehub.protocol.v1 import hub_pb2 as H  # noqa: N812 - the house alias
from edgehub.sync.commands import new_command
from edgehub.sync.decisions import SigningKey
from tests.harness.hub import Hub, ready_hub
from tests.harness.wait import eventually
from tests.integration.test_identity import stub

S = agent_pb2
C = commands_pb2
DEVICE = "pi-approvals"
POLICY = (
    'version = 1\n[[rules]]\nid = "ask"\ntools = ["write_file"]\neffect = "needs_approval"\n'
    '[[rules]]\nid = "rest"\ntools = ["*"]\neffect = "allow"\n'
)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    with ready_hub(tmp_path_factory.mktemp("approvals"), "hub-approvals") as running:
        yield running


def brain(prompt: str) -> str:
    first = prompt.endswith("Step 1 action: ")  # the report: written first (needs approval)
    action = {"tool": "write_file", "args": {"path": "report.txt", "content": "ok"}} if first else None
    return json.dumps({"thought": "go", **(action or {"tool": "finish", "args": {"answer": "ok"}})})


async def publish_as_hub(hub: Hub, *cmds: C.Command) -> None:
    """What anyone who may publish on the command subjects can do (no signing key); each as a new
    message (past the stream's dedupe), whatever its command id."""
    nc = await nats.connect(hub.url, user_credentials=hub.creds("intruder"))
    try:
        for cmd in cmds:
            msg_id = new_command(cmd.device_id, "x").command_id
            await nc.jetstream().publish(
                subjects.commands(cmd.device_id), cmd.SerializeToString(), headers={"Nats-Msg-Id": msg_id}
            )
    finally:
        await nc.close()


async def last_command(hub: Hub, device_id: str) -> C.Command:
    nc = await nats.connect(hub.url, user_credentials=hub.creds("reader"))
    try:
        msg = await nc.jetstream().get_last_msg(subjects.COMMANDS_STREAM, subjects.commands(device_id))
        return C.Command.FromString(msg.data)
    finally:
        await nc.close()


async def dead_letters(hub: Hub, count: int) -> list[str]:
    """The reasons of the device's first ``count`` dead letters (read as the hub)."""
    nc = await nats.connect(hub.url, user_credentials=hub.creds("reader"))
    try:
        sub = await nc.jetstream().subscribe(subjects.device_deadletter(DEVICE), ordered_consumer=True)
        return [(await sub.next_msg(timeout=15)).headers["Edgehub-Reason"] for _ in range(count)]
    finally:
        await nc.close()


def resent(cmd: C.Command, **outer: object) -> C.Command:
    """``cmd`` with unsigned fields changed (``approve`` and ``by`` of its body)."""
    out = C.Command()
    out.CopyFrom(cmd)
    for name, value in outer.items():
        setattr(out.decide_approval if name in ("approve", "by") else out, name, value)
    return out


async def test_only_a_decision_the_hub_signed_for_this_device_resolves_an_approval_once(
    hub: Hub, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    data = tmp_path / "edge"
    assert (await asyncio.to_thread(hub.enroll, DEVICE, data)).returncode == 0
    identity = DeviceIdentity.load(data / "identity", DEVICE)
    assert identity is not None
    identity.hub_key_path.unlink()  # as a device enrolled before the hub signed decisions
    cfg = EdgeConfig.model_validate({
        "device": {"id": DEVICE, "data_dir": str(data)}, "tools": {"load_entry_points": False},
        "safety": {"policy": str(policy)}, "hub": {"heartbeat_s": 0.5},
    })  # fmt: skip
    admin = stub(hub, (hub.trust / "admin.token").read_text().strip())[1]
    olga = admin.CreateApiToken(H.CreateApiTokenRequest(name="olga", role=H.ROLE_OPERATOR), timeout=10)
    as_olga = stub(hub, olga.token)[1]
    async with EdgeDaemon(cfg, brain=FakeBrain(brain)) as edge:
        runner = asyncio.create_task(edge.run())
        store: EdgeStore = edge.store  # type: ignore[assignment]
        started = admin.StartAgent(H.StartAgentRequest(device_id=DEVICE, goal="report"), timeout=10)
        agent, key = started.agent_id, f"{started.agent_id}/0"

        def waiting() -> bool:
            found = store.get_approval(key)
            return found is not None and found.status == "pending"

        await eventually(waiting, within=30, what="the agent waits for its approval")
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        mine = await nats.connect(
            list(identity.nats_urls), user_credentials=str(identity.creds),
            inbox_prefix=identity.inbox_prefix, error_cb=on_error,
        )  # fmt: skip
        try:
            # the device's own credentials may not publish a command, not even to itself
            forged = new_command(DEVICE, "operator:admin")
            forged.decide_approval.CopyFrom(C.DecideApproval(key=key, approve=True, by="operator:admin"))
            await mine.publish(subjects.commands(DEVICE), forged.SerializeToString())
            await eventually(lambda: any("permissions violation" in e.lower() for e in errors), within=10)

            # one the hub signed for another device, taken from the stream
            admin.DecideApproval(
                H.DecideApprovalRequest(key=key, device_id="pi-other", approve=True), timeout=10
            )
            elsewhere = await last_command(hub, "pi-other")
            redirected = resent(elsewhere, device_id=DEVICE)
            changed = resent(redirected)
            decision = C.ApprovalDecision.FromString(changed.decide_approval.decision)
            decision.device_id, decision.approver = DEVICE, "operator:root"
            changed.decide_approval.decision = decision.SerializeToString()
            other_key = SigningKey.load_or_create(tmp_path / "not-the-hub")
            decision.decision_id = "cmd-mine"
            signed_elsewhere = resent(forged)
            signed_elsewhere.decide_approval.CopyFrom(other_key.sign(decision))
            signed_elsewhere.decide_approval.key = key
            await publish_as_hub(hub, forged, signed_elsewhere, changed, redirected)
            reasons = await dead_letters(hub, 4)
            assert "without the hub's signature" in reasons[0]
            assert "signed by key" in reasons[1]
            assert "signature is not the hub's" in reasons[2]
            assert f"for device pi-other, not {DEVICE}" in reasons[3]
            assert waiting()
            assert store.load_agent(agent).status == S.AGENT_STATUS_AWAITING_APPROVAL
            hub_key = SigningKey.load_or_create(hub.trust).public_key
            assert identity.hub_key() is not None
            assert identity.hub_key().public_key == hub_key  # type: ignore[union-attr]  # fetched, kept

            # a typed approver is no identity; the token's is, signed by the hub
            typed = H.DecideApprovalRequest(key=key, approve=True, by="ops-ana")
            with pytest.raises(grpc.RpcError) as refused:
                as_olga.DecideApproval(typed, timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            as_olga.DecideApproval(H.DecideApprovalRequest(key=key, approve=True, note="for ana"), timeout=10)
            await eventually(lambda: store.load_agent(agent).status == S.AGENT_STATUS_FINISHED, within=30)
            decided = store.get_approval(key)
            assert decided is not None
            assert (decided.decided_by, decided.decided_via, decided.note) == (
                "operator:olga",
                "hub",
                "for ana",
            )
            real = await last_command(hub, DEVICE)

            # replayed: as it was, with its unsigned fields flipped (both change nothing), and under a
            # command id of its own (refused); the device takes them in order
            flipped = resent(real, approve=False, by="operator:root")
            renamed = resent(real, command_id="cmd-replayed")
            await publish_as_hub(hub, real, flipped, renamed)
            reasons = await dead_letters(hub, 5)
            assert "the command's id, approval or epoch is not the signed decision's" in reasons[4]
        finally:
            await mine.close()
        assert store.get_approval(key) == decided
        log = [e.detail for e in store.mind_log(agent) if e.kind == S.STEP_KIND_APPROVAL_DECIDED]
        assert log == ["approved by operator:olga (signed by the hub): for ana"]  # decided once

        def trace() -> list[str]:  # the audit trail the hub received
            events = admin.TraceAgent(H.TraceAgentRequest(agent_id=agent), timeout=10).events
            return [e.detail for e in events if e.kind == S.STEP_KIND_APPROVAL_DECIDED]

        await eventually(lambda: trace() == log, within=15, what=lambda: f"the hub's trace: {trace()}")
        edge.request_stop()
        await runner
