"""A compromised device, with its own real NATS credentials (a raw nats-py client, as natscli would
use them), against a real hub and its nats-server, trying to pass for another device (issue 17):

- it writes a twin naming another device into its own KV key: the hub lists no such device, nor
  that version, and once the device is revoked it is not online whatever its twin claimed;
- it sends events for an agent the planner gave to another device, for that agent's not yet
  dispatched sibling, and a task result finishing the other device's task: all dead-lettered, the
  other device's agent and goal unaffected; the operator's ``StartAgent --agent-id`` refuses an id
  another device owns.

The operator's side is raw gRPC (the generated stubs, as grpcurl would call them)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import nats
import pytest
from nats.aio.client import Client

from edgehub.edge.uplink.identity import DeviceIdentity, enroll
from edgehub.protocol import subjects
from edgehub.protocol.ids import kv_key
from edgehub.protocol.v1 import agent_pb2, events_pb2, goals_pb2, hub_pb2_grpc, task_pb2, twin_pb2
from edgehub.protocol.v1 import hub_pb2 as H  # noqa: N812 - the house alias
from edgehub.sync.publisher import msg_id
from edgehub.sync.streams import DEVICES
from tests.harness.hub import Hub, start_hub
from tests.harness.wait import eventually

S = agent_pb2
G = goals_pb2
TOOLS = ["write_file", "read_file", "run_command", "finish"]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Hub:
    running = start_hub(tmp_path_factory.mktemp("claims"), "hub-claims")
    running.wait_ready()
    yield running  # type: ignore[misc]
    running.stop()


def api(hub: Hub) -> hub_pb2_grpc.HubServiceStub:
    """The admin's raw gRPC stub."""
    token = (hub.trust / "admin.token").read_text().strip()
    creds = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials((hub.trust / "ca.pem").read_bytes()),
        grpc.access_token_call_credentials(token),
    )
    return hub_pb2_grpc.HubServiceStub(grpc.secure_channel(hub.api, creds))


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@dataclass
class Device:
    """A device as an attacker holds it: its enrolled identity and a raw client on its credentials."""

    device_id: str
    nc: Client
    seq: int = 0
    errors: list[str] = field(default_factory=list)

    async def put_twin(self, twin: twin_pb2.DeviceTwin) -> None:
        kv = await self.nc.jetstream().key_value(DEVICES.name)
        await kv.put(kv_key(self.device_id), twin.SerializeToString())

    async def send(self, agent_id: str, body: Callable[[events_pb2.EdgeEvent], None]) -> None:
        """One event on its own authenticated subject, in its own sequence (as its daemon would)."""
        self.seq += 1
        event = events_pb2.EdgeEvent(
            schema_version=1, event_id=f"{agent_id}/0/{self.seq}", device_id=self.device_id,
            seq=self.seq, agent_id=agent_id,
        )  # fmt: skip
        body(event)
        await self.nc.jetstream().publish(
            subjects.events(self.device_id, agent_id),
            event.SerializeToString(),
            headers={"Nats-Msg-Id": msg_id(self.device_id, self.seq)},
        )


def twin(device_id: str, **fields: object) -> twin_pb2.DeviceTwin:
    out = twin_pb2.DeviceTwin(
        schema_version=1, device_id=device_id, state=twin_pb2.DEVICE_STATE_RUNNING, sent_at=time.time(),
        heartbeat_s=60, version="0.1.0", tools=TOOLS, max_concurrent=2,
    )  # fmt: skip
    out.labels.update(fields.pop("labels", {}))  # type: ignore[arg-type]
    for name, value in fields.items():
        setattr(out, name, value)
    return out


def step(agent_id: str, n: int = 1) -> Callable[[events_pb2.EdgeEvent], None]:
    def body(event: events_pb2.EdgeEvent) -> None:
        event.step.CopyFrom(
            S.StepEvent(event_id=f"{agent_id}/{n}", agent_id=agent_id, step=n, status=S.AGENT_STATUS_RUNNING)
        )

    return body


def finished(task_id: str, agent_id: str) -> Callable[[events_pb2.EdgeEvent], None]:
    def body(event: events_pb2.EdgeEvent) -> None:
        event.task_result.CopyFrom(
            task_pb2.TaskResult(
                task_id=task_id, agent_id=agent_id, status=S.AGENT_STATUS_FINISHED, answer="forged answer"
            )
        )

    return body


@pytest.fixture
async def enrolled(hub: Hub, tmp_path: Path) -> AsyncIterator[Callable[[str], object]]:
    """``await enrolled(device_id)``: a device enrolled with a one-time token, connected raw."""
    clients: list[Client] = []

    async def make(device_id: str) -> Device:
        token = api(hub).CreateEnrollmentToken(
            H.CreateEnrollmentTokenRequest(device_id=device_id), timeout=10
        )
        ca = (hub.trust / "ca.pem").read_bytes()
        identity: DeviceIdentity = await asyncio.to_thread(
            enroll, tmp_path / f"{device_id}-{len(clients)}", device_id, hub.api, token.token, ca
        )
        device = Device(device_id, None)  # type: ignore[arg-type]

        async def on_error(exc: Exception) -> None:
            device.errors.append(str(exc))

        device.nc = await nats.connect(
            list(identity.nats_urls), user_credentials=str(identity.creds),
            inbox_prefix=identity.inbox_prefix, error_cb=on_error, max_reconnect_attempts=1,
        )  # fmt: skip
        clients.append(device.nc)
        return device

    yield make
    for nc in clients:
        await nc.close()


def listed(hub: Hub) -> dict[str, H.Device]:
    return {d.device_id: d for d in api(hub).ListDevices(H.ListDevicesRequest(), timeout=10).devices}


async def test_a_device_cannot_pass_for_another_in_its_twin_and_is_offline_once_revoked(
    hub: Hub, enrolled: Callable[[str], object]
) -> None:
    a: Device = await enrolled("dev-a")  # type: ignore[misc]
    await enrolled("dev-b")
    forged = twin("dev-b", heartbeat_s=3600, version="9.9.9-forged")
    await a.put_twin(forged)
    # then its own twin, with a heartbeat of an hour and a clock ten years ahead: the hub applies the
    # watch in order, so once this one is listed the forged one was seen (and refused)
    await a.put_twin(twin("dev-a", heartbeat_s=3600, sent_at=time.time() + 10 * 365 * 86400))
    await eventually(lambda: "dev-a" in listed(hub), within=15, what="dev-a's own twin listed")
    devices = listed(hub)
    assert "dev-b" not in devices
    assert all(d.twin.version != "9.9.9-forged" for d in devices.values())
    mine = devices["dev-a"]
    assert mine.online
    assert mine.twin.heartbeat_s == 300  # bounded: online at most 15 minutes after its last twin
    assert mine.twin.sent_at <= time.time()  # a clock set ahead counts as the hub's receive time

    revoked = api(hub).RevokeDevice(H.RevokeDeviceRequest(device_id="dev-a", reason="stolen"), timeout=10)
    assert revoked.applied
    assert not listed(hub)["dev-a"].online
    assert not api(hub).GetDevice(H.GetDeviceRequest(device_id="dev-a"), timeout=10).online

    again: Device = await enrolled("dev-a")  # type: ignore[misc]
    await again.put_twin(twin("dev-a"))  # enrolled again: its new credentials are valid
    await eventually(lambda: listed(hub)["dev-a"].online, within=15, what="dev-a online once enrolled again")


async def test_a_device_cannot_claim_the_agents_the_planner_gave_another(
    hub: Hub, enrolled: Callable[[str], object]
) -> None:
    p: Device = await enrolled("dev-p")  # type: ignore[misc]
    q: Device = await enrolled("dev-q")  # type: ignore[misc]
    await p.put_twin(twin("dev-p", labels={"claims": "p"}))
    await eventually(lambda: "dev-p" in listed(hub), within=15)
    stub = api(hub)
    plan = G.PlanDraft(
        tasks=[
            G.TaskDraft(id="t1", goal="first", estimate_tokens=100),
            G.TaskDraft(id="t2", goal="second", needs=["t1"], estimate_tokens=100),
        ]
    )
    only_p = {"claims": "p"}  # the test before left another device online
    goal = stub.SubmitGoal(G.SubmitGoalRequest(text="two steps", plan=plan, labels=only_p), timeout=30)

    def dispatched() -> G.TaskState | None:
        state = stub.GetGoal(G.GetGoalRequest(goal_id=goal.goal_id), timeout=10).tasks["t1"]
        return state if state.agent_id else None

    await eventually(
        lambda: dispatched() is not None,
        within=30,
        what=lambda: f"t1 dispatched: {stub.GetGoal(G.GetGoalRequest(goal_id=goal.goal_id), timeout=10)}",
    )
    task = dispatched()
    assert task is not None
    assert task.device == "dev-p"
    mine = task.agent_id  # registered to dev-p before its StartAgent is sent (once the goal is stored)
    await eventually(
        lambda: (
            code_of(lambda: stub.GetAgent(H.GetAgentRequest(agent_id=mine), timeout=10)) == grpc.StatusCode.OK
        ),
        within=15,
        what="the task agent registered",
    )
    assert stub.GetAgent(H.GetAgentRequest(agent_id=mine), timeout=10).device_id == "dev-p"
    sibling = mine.replace("-t1-", "-t2-")  # predictable: the planner's ids are {goal}-{task}-{attempt}

    await q.send(mine, step(mine))
    await q.send(mine, finished(f"{goal.goal_id}/t1", mine))
    await q.send(sibling, step(sibling))
    await q.send("q-own-agent", step("q-own-agent"))  # its own agent: registered to it
    await eventually(
        lambda: (
            code_of(lambda: stub.GetAgent(H.GetAgentRequest(agent_id="q-own-agent"), timeout=10))
            == grpc.StatusCode.OK
        ),
        within=15,
        what="dev-q's own agent registered (its earlier events were applied or refused)",
    )
    record = stub.GetAgent(H.GetAgentRequest(agent_id=mine), timeout=10)
    assert (record.device_id, record.status) == ("dev-p", S.AGENT_STATUS_PENDING)  # unaffected
    sibling_lookup = code_of(lambda: stub.GetAgent(H.GetAgentRequest(agent_id=sibling), timeout=10))
    assert sibling_lookup == grpc.StatusCode.NOT_FOUND
    now = stub.GetGoal(G.GetGoalRequest(goal_id=goal.goal_id), timeout=10)
    assert now.tasks["t1"].status == G.TASK_STATUS_DISPATCHED  # the forged result finished nothing
    assert now.status != G.GOAL_STATUS_DONE

    await p.send(mine, step(mine))  # the owner's own step is applied
    await eventually(
        lambda: stub.GetAgent(H.GetAgentRequest(agent_id=mine), timeout=10).status == S.AGENT_STATUS_RUNNING,
        within=15,
    )

    def start(device: str, agent_id: str) -> grpc.StatusCode:
        request = H.StartAgentRequest(device_id=device, goal="g", agent_id=agent_id)
        return code_of(lambda: stub.StartAgent(request, timeout=10))

    assert start("dev-q", mine) == grpc.StatusCode.INVALID_ARGUMENT  # the planner's namespace
    assert start("dev-p", "q-own-agent") == grpc.StatusCode.FAILED_PRECONDITION  # dev-q's
    assert start("dev-p", "shared-1") == grpc.StatusCode.OK
    assert start("dev-p", "shared-1") == grpc.StatusCode.OK  # again, to its owner: fine
    assert start("dev-q", "shared-1") == grpc.StatusCode.FAILED_PRECONDITION
    stub.CancelGoal(G.CancelGoalRequest(goal_id=goal.goal_id), timeout=10)
