"""Operator scopes as an attacker tries them (issue 17), against a real hub subprocess and its real
nats-server, with raw gRPC calls (the generated stubs, as grpcurl makes them: no CLI checks).

The fleet: two devices the hub labelled ``site=plant-a``, one ``site=plant-b``, one ``site=plant-c``
whose twin claims ``site=plant-a`` (a compromised device lies about itself), one the hub labelled not
at all. A site-A token (operator, viewer, admin) acts on site A and nowhere else: every acting method
aimed at another device is PERMISSION_DENIED naming that device and the caller's scope, and nothing
changes (no command reaches the device, no agent is registered, no label, credential or token moves);
reads leave out what is outside the scope; a goal's tasks run only on devices the hub put in it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from nats.js.errors import NotFoundError

from edgehub.edge.uplink.identity import EnrollmentError, enroll
from edgehub.protocol import subjects
from edgehub.protocol.ids import kv_key
from edgehub.protocol.v1 import goals_pb2, scope_pb2, twin_pb2
from edgehub.protocol.v1 import hub_pb2 as H  # noqa: N812 - the house alias
from edgehub.sync.streams import DEVICES
from tests.harness.hub import Hub, start_hub
from tests.harness.wait import assert_eventually
from tests.integration.test_identity import stub

G = goals_pb2
TOOLS = ["write_file", "read_file", "run_command", "finish"]
LABELS = {
    "dev-a1": {"site": "plant-a"},
    "dev-a2": {"site": "plant-a"},
    "dev-b1": {"site": "plant-b"},
    "dev-c": {"site": "plant-c"},
    "dev-u": {},
}
CLAIMS = {"dev-c": {"site": "plant-a"}}
"""What a device's twin says of it, where it lies."""
LATHE = {"dev-b1", "dev-c"}
"""Devices whose twin offers the ``lathe`` tool."""
SITE_A = scope_pb2.Scope(selectors=[scope_pb2.LabelSelector(labels={"site": "plant-a"})])


@dataclass
class Fleet:
    hub: Hub
    admin: Any
    """The first admin's raw stub (no scope)."""
    operator: Any
    """``a-op``: operator, scope site=plant-a."""
    viewer: Any
    site_admin: Any
    """``a-admin``: admin, scope site=plant-a."""
    folder: Path


def twin(device_id: str) -> twin_pb2.DeviceTwin:
    out = twin_pb2.DeviceTwin(
        schema_version=1, device_id=device_id, state=twin_pb2.DEVICE_STATE_RUNNING, sent_at=time.time(),
        heartbeat_s=300, version="0.1.0", max_concurrent=2,
        tools=TOOLS + (["lathe"] if device_id in LATHE else []),
    )  # fmt: skip
    out.labels.update(CLAIMS.get(device_id, LABELS[device_id]))
    return out


async def report(device_id: str, creds: str, urls: list[str]) -> None:
    """The device puts its twin with its own credentials (a lying one for dev-c)."""
    nc = await nats.connect(urls, user_credentials=creds, inbox_prefix=f"_INBOX_{device_id}")
    try:
        kv = await nc.jetstream().key_value(DEVICES.name)
        await kv.put(kv_key(device_id), twin(device_id).SerializeToString())
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    folder = tmp_path_factory.mktemp("scopes")
    hub = start_hub(folder, "hub-scopes")
    try:
        hub.wait_ready()
        _, admin = stub(hub, (hub.trust / "admin.token").read_text().strip())
        ca = (hub.trust / "ca.pem").read_bytes()
        for device_id, labels in LABELS.items():
            request = H.CreateEnrollmentTokenRequest(device_id=device_id, labels=labels)
            token = admin.CreateEnrollmentToken(request, timeout=10)
            assert dict(token.labels) == labels
            identity = enroll(folder / device_id, device_id, hub.api, token.token, ca)
            asyncio.run(report(device_id, str(identity.creds), list(identity.nats_urls)))

        def token(name: str, role: int) -> Any:
            made = admin.CreateApiToken(
                H.CreateApiTokenRequest(name=name, role=role, scope=SITE_A), timeout=10
            )
            return stub(hub, made.token)[1]

        made = Fleet(
            hub, admin, token("a-op", H.ROLE_OPERATOR), token("a-view", H.ROLE_VIEWER),
            token("a-admin", H.ROLE_ADMIN), folder,
        )  # fmt: skip
        for agent, device in (("a-agent", "dev-a1"), ("b-agent", "dev-b1")):
            admin.StartAgent(H.StartAgentRequest(device_id=device, goal="g", agent_id=agent), timeout=10)
        assert_eventually(
            lambda: (
                {d.device_id for d in admin.ListDevices(H.ListDevicesRequest(), timeout=10).devices}
                == set(LABELS)
            ),
            timeout=15,
            what="every device's twin listed",
        )
        yield made
    finally:
        hub.stop()


def refused(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def assert_denied(call: Callable[[], object], *named: str, echoes: bool = False) -> None:
    """PERMISSION_DENIED naming ``named`` and the caller's scope, and nothing of another site (unless
    the request itself named it: ``echoes``)."""
    code, details = refused(call)
    assert code == grpc.StatusCode.PERMISSION_DENIED, (code, details)
    assert "site=plant-a" in details, details  # the caller's scope
    assert all(n in details for n in named), (named, details)
    if not echoes:
        assert "plant-b" not in details, details
        assert "plant-c" not in details, details


async def last_command(hub: Hub, device_id: str) -> int:
    """The stream sequence of the last command sent to the device (0: none ever)."""
    nc = await nats.connect(hub.url, user_credentials=hub.creds())
    try:
        msg = await nc.jetstream().get_last_msg(subjects.COMMANDS_STREAM, subjects.commands(device_id))
        return int(msg.seq or 0)
    except NotFoundError:
        return 0
    finally:
        await nc.close()


def owner(fleet: Fleet, agent_id: str) -> tuple[str, int] | grpc.StatusCode:
    try:
        record = fleet.admin.GetAgent(H.GetAgentRequest(agent_id=agent_id), timeout=10)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return record.device_id, record.status


async def test_a_site_a_operator_acts_on_no_other_device_and_nothing_changes(fleet: Fleet) -> None:
    op, hub = fleet.operator, fleet.hub
    before = {d: await last_command(hub, d) for d in ("dev-b1", "dev-c", "dev-u")}
    b_agent = owner(fleet, "b-agent")
    for device in ("dev-b1", "dev-c", "dev-u", "dev-never-seen"):  # dev-c claims site=plant-a
        start = H.StartAgentRequest(device_id=device, goal="g", agent_id=f"took-{device}")
        assert_denied(lambda r=start: op.StartAgent(r, timeout=10), f"device {device}")
        drain = H.DrainDeviceRequest(device_id=device)
        assert_denied(lambda r=drain: op.DrainDevice(r, timeout=10), f"device {device}")
    for device in ("", "dev-b1"):  # by the agent's owner, and naming the device
        stop = H.StopAgentRequest(agent_id="b-agent", device_id=device)
        assert_denied(lambda r=stop: op.StopAgent(r, timeout=10))
        decide = H.DecideApprovalRequest(key="b-agent/0", device_id=device, approve=True)
        assert_denied(lambda r=decide: op.DecideApproval(r, timeout=10))
    # an agent it owns must not leave site A, nor one of site B come in
    into_b = H.MigrateAgentRequest(agent_id="a-agent", to_device="dev-b1")
    assert_denied(lambda: op.MigrateAgent(into_b, timeout=10), "device dev-b1")
    from_b = H.MigrateAgentRequest(agent_id="b-agent", to_device="dev-a2")
    assert_denied(lambda: op.MigrateAgent(from_b, timeout=10), "agent b-agent")
    taken = H.StartAgentRequest(device_id="dev-a1", goal="g", agent_id="b-agent")  # site B's agent id
    code, details = refused(lambda: op.StartAgent(taken, timeout=10))
    assert (code, "dev-b1" in details) == (grpc.StatusCode.FAILED_PRECONDITION, False), details
    code, details = refused(lambda: op.Consolidate(H.ConsolidateRequest(), timeout=10))
    assert (code, "whole fleet" in details) == (grpc.StatusCode.PERMISSION_DENIED, True)

    # nothing changed: no command reached those devices, no agent was registered or moved
    assert {d: await last_command(hub, d) for d in before} == before
    for device in ("dev-b1", "dev-c", "dev-u", "dev-never-seen"):
        assert owner(fleet, f"took-{device}") == grpc.StatusCode.NOT_FOUND
    assert owner(fleet, "b-agent") == b_agent
    assert (
        refused(lambda: fleet.admin.GetMigration(H.GetMigrationRequest(agent_id="b-agent"), timeout=10))[0]
        == grpc.StatusCode.NOT_FOUND
    )

    # the same token works on site A
    a_before = await last_command(hub, "dev-a1")
    op.StartAgent(H.StartAgentRequest(device_id="dev-a1", goal="g", agent_id="a-second"), timeout=10)
    op.DecideApproval(H.DecideApprovalRequest(key="a-agent/0", approve=False), timeout=10)
    op.StopAgent(H.StopAgentRequest(agent_id="a-second"), timeout=10)
    op.DrainDevice(H.DrainDeviceRequest(device_id="dev-a1", resume=True), timeout=10)
    assert await last_command(hub, "dev-a1") > a_before
    moved = op.MigrateAgent(H.MigrateAgentRequest(agent_id="a-agent", to_device="dev-a2"), timeout=10)
    assert (moved.source_device, moved.target_device) == ("dev-a1", "dev-a2")
    assert fleet.viewer.GetMigration(H.GetMigrationRequest(agent_id="a-agent"), timeout=10).migration_id


def test_a_scoped_viewer_reads_only_its_devices_and_a_lying_twin_enters_no_scope(fleet: Fleet) -> None:
    view = fleet.viewer
    devices = view.ListDevices(H.ListDevicesRequest(), timeout=10).devices
    listed = {d.device_id: d.labels["site"] for d in devices}  # the hub's labels (another test adds one)
    assert listed == {"dev-a1": "plant-a", "dev-a2": "plant-a"}  # not dev-c, not dev-u
    everything = fleet.admin.ListDevices(H.ListDevicesRequest(), timeout=10).devices
    shown = {d.device_id: (dict(d.labels), dict(d.twin.labels)) for d in everything}
    assert shown["dev-c"] == ({"site": "plant-c"}, {"site": "plant-a"})  # the hub's labels, and its claim
    agents = {a.agent_id for a in view.ListAgents(H.ListAgentsRequest(), timeout=10).agents}
    assert "b-agent" not in agents
    assert "a-agent" in agents
    assert not view.ListAgents(H.ListAgentsRequest(device_id="dev-b1"), timeout=10).agents
    for device in ("dev-b1", "dev-c", "dev-u", "dev-never-seen"):
        assert_denied(lambda d=device: view.GetDevice(H.GetDeviceRequest(device_id=d), timeout=10), device)
    for agent in ("b-agent", "never-was"):  # unknown and out of scope answer alike
        assert_denied(lambda a=agent: view.GetAgent(H.GetAgentRequest(agent_id=a), timeout=10), agent)
        assert_denied(lambda a=agent: view.TraceAgent(H.TraceAgentRequest(agent_id=a), timeout=10), agent)
        assert_denied(lambda a=agent: view.GetMigration(H.GetMigrationRequest(agent_id=a), timeout=10))
    me = view.WhoAmI(H.WhoAmIRequest(), timeout=10)
    assert (me.name, me.role, me.scope) == ("operator:a-view", H.ROLE_VIEWER, SITE_A)


def test_a_scoped_admin_cannot_revoke_relabel_enroll_or_mint_beyond_its_scope(fleet: Fleet) -> None:
    adm, root = fleet.site_admin, fleet.admin
    assert_denied(lambda: adm.RevokeDevice(H.RevokeDeviceRequest(device_id="dev-b1"), timeout=10), "dev-b1")
    assert root.GetDevice(H.GetDeviceRequest(device_id="dev-b1"), timeout=10).online  # not revoked
    for device, labels in (("dev-b1", {"site": "plant-a"}), ("dev-a2", {"site": "plant-b"}), ("dev-a2", {})):
        request = H.SetDeviceLabelsRequest(device_id=device, labels=labels)
        assert_denied(lambda r=request: adm.SetDeviceLabels(r, timeout=10), f"device {device}", echoes=True)
    labels = {d: dict(root.GetDevice(H.GetDeviceRequest(device_id=d), timeout=10).labels) for d in LABELS}
    assert labels == LABELS
    relabelled = adm.SetDeviceLabels(
        H.SetDeviceLabelsRequest(device_id="dev-a2", labels={"site": "plant-a", "line": "2"}), timeout=10
    )
    assert (relabelled.set_by, dict(relabelled.labels)) == (
        "operator:a-admin",
        {"site": "plant-a", "line": "2"},
    )

    for device, labels in (("dev-b1", {}), ("dev-b1", {"site": "plant-a"}), ("dev-c", {"site": "plant-a"})):
        request = H.CreateEnrollmentTokenRequest(device_id=device, labels=labels)  # to take a device over
        assert_denied(lambda r=request: adm.CreateEnrollmentToken(r, timeout=10), f"device {device}")
    for labels in ({}, {"site": "plant-b"}):
        request = H.CreateEnrollmentTokenRequest(device_id="dev-new", labels=labels)
        assert_denied(
            lambda r=request: adm.CreateEnrollmentToken(r, timeout=10), "device dev-new", echoes=True
        )
    new = adm.CreateEnrollmentToken(
        H.CreateEnrollmentTokenRequest(device_id="dev-new", labels={"site": "plant-a"}), timeout=10
    )
    assert dict(new.labels) == {"site": "plant-a"}
    # a token made while a device was new is refused once another admin put it elsewhere (not spent)
    racing = adm.CreateEnrollmentToken(
        H.CreateEnrollmentTokenRequest(device_id="dev-race", labels={"site": "plant-a"}), timeout=10
    )
    root.SetDeviceLabels(
        H.SetDeviceLabelsRequest(device_id="dev-race", labels={"site": "plant-b"}), timeout=10
    )
    ca = (fleet.hub.trust / "ca.pem").read_bytes()
    with pytest.raises(EnrollmentError, match="permission_denied: device dev-race is now outside the scope"):
        enroll(fleet.folder / "race", "dev-race", fleet.hub.api, racing.token, ca)

    def mint(scope: scope_pb2.Scope) -> tuple[grpc.StatusCode, str]:
        request = H.CreateApiTokenRequest(name="minted", role=H.ROLE_ADMIN, scope=scope)
        return refused(lambda: adm.CreateApiToken(request, timeout=10))

    for wider in (
        scope_pb2.Scope(),  # the whole fleet
        scope_pb2.Scope(selectors=[scope_pb2.LabelSelector(labels={"site": "plant-b"})]),
        scope_pb2.Scope(devices=["dev-b1"]),
        scope_pb2.Scope(selectors=[*SITE_A.selectors, scope_pb2.LabelSelector(labels={"line": "2"})]),
    ):
        code, details = mint(wider)
        assert code == grpc.StatusCode.PERMISSION_DENIED, (wider, details)
    narrower = scope_pb2.Scope(selectors=[scope_pb2.LabelSelector(labels={"site": "plant-a", "line": "2"})])
    assert mint(narrower) == (grpc.StatusCode.OK, "")
    names = {t.name for t in adm.ListApiTokens(H.ListApiTokensRequest(), timeout=10).tokens}
    assert names == {"a-op", "a-view", "a-admin", "minted"}  # not the first admin's
    assert_denied(lambda: adm.DeleteApiTokens(H.DeleteApiTokensRequest(name="admin"), timeout=10))
    assert root.WhoAmI(H.WhoAmIRequest(), timeout=10).name == "operator:admin"  # still works


def test_a_scoped_goal_runs_only_on_devices_the_hub_put_in_its_scope(fleet: Fleet) -> None:
    op, root = fleet.operator, fleet.admin
    lathe = G.PlanDraft(tasks=[G.TaskDraft(id="cut", goal="cut", tools=["lathe"], estimate_tokens=100)])
    request = G.SubmitGoalRequest(text="cut a part", plan=lathe, labels={"site": "plant-a"})
    scoped = op.SubmitGoal(request, timeout=30)  # dev-c offers a lathe and claims site=plant-a
    unscoped = root.SubmitGoal(request, timeout=30)  # the control: the whole fleet places it on dev-c

    def goal(goal_id: str) -> G.Goal:
        return root.GetGoal(G.GetGoalRequest(goal_id=goal_id), timeout=10)

    assert_eventually(lambda: goal(unscoped.goal_id).tasks["cut"].device == "dev-c", timeout=20)
    ours = goal(scoped.goal_id)
    assert (ours.status, ours.scope) == (G.GOAL_STATUS_FAILED, SITE_A)
    assert "lathe" in ours.error
    assert not any(t.device for t in ours.tasks.values())
    write = G.PlanDraft(tasks=[G.TaskDraft(id="w", goal="write", tools=["write_file"], estimate_tokens=100)])
    placed = op.SubmitGoal(G.SubmitGoalRequest(text="write it", plan=write), timeout=30)
    assert_eventually(lambda: goal(placed.goal_id).tasks["w"].device in ("dev-a1", "dev-a2"), timeout=20)

    shown = {g.goal_id for g in op.ListGoals(G.ListGoalsRequest(), timeout=10).goals}
    assert {scoped.goal_id, placed.goal_id} <= shown
    assert unscoped.goal_id not in shown
    for call in (
        lambda: op.GetGoal(G.GetGoalRequest(goal_id=unscoped.goal_id), timeout=10),
        lambda: op.CancelGoal(G.CancelGoalRequest(goal_id=unscoped.goal_id), timeout=10),
        lambda: op.DecideTask(G.DecideTaskRequest(goal_id=unscoped.goal_id, task_id="cut"), timeout=10),
    ):
        assert_denied(call, unscoped.goal_id)
    assert goal(unscoped.goal_id).status == G.GOAL_STATUS_RUNNING  # not cancelled
    op.CancelGoal(G.CancelGoalRequest(goal_id=placed.goal_id), timeout=10)
    root.CancelGoal(G.CancelGoalRequest(goal_id=unscoped.goal_id), timeout=10)
