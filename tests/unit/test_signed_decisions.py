"""Approval decisions as the edge takes them (issue 17), without a server: the hub's signing key, and
the command router applying only a decision the hub signed for this device, fresh and once. Each
forgery leaves the approval pending and the agent where it was; a decision made on the device is
recorded as the OS user and counts only where ``[safety] local_approvals`` allows it."""

from __future__ import annotations

import stat
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import pytest

from edgehub.edge.agent.loop import new_agent
from edgehub.edge.agent.tools.base import ToolContext
from edgehub.edge.agent.tools.builtins import WRITE_FILE
from edgehub.edge.datadir import DrainFlag
from edgehub.edge.safety.approvals import Approver, PolicyAdmission, decide, local_approvals_allowed
from edgehub.edge.safety.policy import PolicyEngine
from edgehub.edge.store.base import Approval
from edgehub.edge.store.sqlite import SqliteStore
from edgehub.edge.uplink.commands import CommandRouter
from edgehub.edge.uplink.decisions import HubDecisions
from edgehub.edge.uplink.identity import DeviceIdentity
from edgehub.protocol.v1 import agent_pb2, commands_pb2
from edgehub.sync.decisions import HubKey, SigningKey
from edgehub.sync.errors import MessageRejected
from tests.unit.test_command_router import Agents

S = agent_pb2
C = commands_pb2
KEY = "a1/0"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore.open(tmp_path / "edge.db", device_id="dev-1")
    state = new_agent("a1", "g")
    state.status = S.AGENT_STATUS_AWAITING_APPROVAL
    s.create_agent(state)
    pending = Approval(KEY, "a1", 0, "write_file", '{"path": "report.txt"}', "{}", "ask-first", "why")
    event = S.StepEvent(event_id="a1/0/0/approval", agent_id="a1", kind=S.STEP_KIND_APPROVAL_REQUESTED)
    s.checkpoint(state, event, [], approval=pending)
    yield s
    s.close()


@pytest.fixture
def hub_key(tmp_path: Path) -> SigningKey:
    return SigningKey.load_or_create(tmp_path / "trust")


def router(store: SqliteStore, tmp_path: Path, signer: SigningKey | None) -> CommandRouter:
    key = HubKey.from_raw(signer.public_key) if signer else None
    return CommandRouter(
        store, Agents(store), DrainFlag(tmp_path, "dev-1"), device_id="dev-1", identity=None,
        keep_consolidated_days=0, decisions=HubDecisions(None, "dev-1", key=key),
    )  # fmt: skip


def signed(signer: SigningKey, **change: object) -> C.Command:
    """A decision command as the hub sends it (``change``: fields of the signed decision)."""
    now = time.time()
    decision = C.ApprovalDecision(
        decision_id="cmd-1", device_id="dev-1", key=KEY, approve=True, approver="operator:alice",
        note="ok", issued_at=now, expires_at=now + 3600,
    )  # fmt: skip
    for name, value in change.items():
        setattr(decision, name, value)
    cmd = C.Command(command_id=decision.decision_id, device_id="dev-1", epoch=decision.epoch)
    cmd.decide_approval.CopyFrom(signer.sign(decision))
    cmd.decide_approval.key = KEY  # what the router fences by
    return cmd


def pending(store: SqliteStore) -> bool:
    found = store.get_approval(KEY)
    return found is not None and found.status == "pending"


def test_the_hub_key_is_made_once_kept_secret_and_named_by_its_digest(tmp_path: Path) -> None:
    one = SigningKey.load_or_create(tmp_path)
    assert SigningKey.load_or_create(tmp_path).public_key == one.public_key
    assert stat.S_IMODE((tmp_path / "signing.key").stat().st_mode) == 0o600
    kept = HubKey.from_pem(HubKey.from_raw(one.public_key).to_pem())
    assert (kept.public_key, kept.key_id) == (one.public_key, one.key_id)


async def test_forged_approval_decisions_are_refused_and_the_approval_stays_pending(
    store: SqliteStore, tmp_path: Path, hub_key: SigningKey
) -> None:
    r = router(store, tmp_path, hub_key)
    other = SigningKey.load_or_create(tmp_path / "another-hub")
    unsigned = C.Command(command_id="cmd-9", device_id="dev-1")
    unsigned.decide_approval.CopyFrom(C.DecideApproval(key=KEY, approve=True, by="operator:admin"))
    tampered = signed(hub_key)
    d = C.ApprovalDecision.FromString(tampered.decide_approval.decision)
    d.approver = "operator:admin"
    tampered.decide_approval.decision = d.SerializeToString()
    wrong_key = signed(other)
    wrong_key.decide_approval.key_id = hub_key.key_id  # claims the hub's key
    cases = [
        ("without the hub's signature", unsigned),
        ("signed by key", signed(other)),
        ("signature is not the hub's", tampered),
        ("signature is not the hub's", wrong_key),
        ("for device dev-2, not dev-1", signed(hub_key, device_id="dev-2")),
        ("expired", signed(hub_key, issued_at=time.time() - 7200, expires_at=time.time() - 60)),
        ("ahead", signed(hub_key, issued_at=time.time() + 3600, expires_at=time.time() + 7200)),
        ("no valid lifetime", signed(hub_key, expires_at=time.time() + 30 * 86400)),
    ]
    for why, cmd in cases:
        with pytest.raises(MessageRejected, match=why):
            await r.apply(cmd)
        assert pending(store), why
    # the signed decision, put in a command of another id, for another approval or epoch: the fence
    # would stand the agent down for an epoch ahead, so it is checked before fencing
    renamed = signed(hub_key)
    renamed.command_id = "cmd-9"
    moved = signed(hub_key)
    moved.decide_approval.key = "a1/7"
    ahead = signed(hub_key)
    ahead.epoch = 5
    for cmd in (renamed, moved, ahead):
        with pytest.raises(MessageRejected, match="not the signed decision's"):
            await r.apply(cmd)
    assert store.load_agent("a1").status == S.AGENT_STATUS_AWAITING_APPROVAL  # not stood down
    assert pending(store)
    with pytest.raises(MessageRejected, match="not enrolled"):  # no hub key: nothing to verify with
        await router(store, tmp_path, None).apply(signed(hub_key))
    assert pending(store)


async def test_a_signed_decision_resolves_its_approval_once_in_the_approvers_name(
    store: SqliteStore, tmp_path: Path, hub_key: SigningKey
) -> None:
    r = router(store, tmp_path, hub_key)
    cmd = signed(hub_key)
    await r.apply(cmd)
    got = store.get_approval(KEY)
    assert got is not None
    assert (got.status, got.decided_by, got.decided_via, got.decision_id) == (
        "approved", "operator:alice", "hub", "cmd-1",
    )  # fmt: skip
    assert store.load_agent("a1").status == S.AGENT_STATUS_RUNNING
    log = store.mind_log("a1")[-1]
    assert log.detail == "approved by operator:alice (signed by the hub): ok"
    await r.apply(cmd)  # delivered again: applied before, nothing changes
    with pytest.raises(MessageRejected, match="already approved by operator:alice"):
        await r.apply(signed(hub_key, decision_id="cmd-2", approve=False))  # another decision, later
    assert store.get_approval(KEY).status == "approved"  # type: ignore[union-attr]


def test_one_decision_resolves_one_approval(store: SqliteStore) -> None:
    state = store.load_agent("a1")
    decide(store, KEY, approve=True, approver=Approver("operator:alice", "hub", "cmd-1"))
    second = Approval("a1/3", "a1", 3, "write_file", "{}", "{}", "r", "why")
    store.checkpoint(state, S.StepEvent(event_id="a1/0/3/approval", agent_id="a1"), [], approval=second)
    with pytest.raises(Exception, match="used before"):
        decide(store, "a1/3", approve=True, approver=Approver("operator:alice", "hub", "cmd-1"))
    assert store.get_approval("a1/3").status == "pending"  # type: ignore[union-attr]


POLICY = """
version = 1

[[rules]]
id = "ask-first"
tools = ["write_file"]
effect = "needs_approval"
reason = "reports go to people"
"""


async def test_a_decision_on_the_device_is_the_os_users_and_counts_only_where_allowed(
    store: SqliteStore, tmp_path: Path
) -> None:
    me = Approver.local()
    assert me.name.startswith("local:")
    assert me.via == "local"
    assert local_approvals_allowed("unenrolled", enrolled=False)
    assert not local_approvals_allowed("unenrolled", enrolled=True)
    assert local_approvals_allowed("on", enrolled=True)
    assert not local_approvals_allowed("off", enrolled=False)
    decided = decide(store, KEY, approve=True, approver=me)
    assert (decided.decided_by, decided.decided_via) == (me.name, "local")

    (tmp_path / "policy.toml").write_text(POLICY)
    engine = PolicyEngine(tmp_path / "policy.toml")
    call = S.ToolCall(tool="write_file", args_json='{"path": "report.txt"}')
    ctx = ToolContext("a1", 0, KEY, tmp_path, notes=None)  # type: ignore[arg-type]
    for local_ok, effect in ((True, "allow"), (False, "needs_approval")):
        verdict = await PolicyAdmission(engine, store, local_ok=local_ok).admit(call, WRITE_FILE, {}, ctx)
        assert verdict.effect == effect, local_ok


async def test_a_device_enrolled_before_fetches_the_hub_key_once_and_waits_while_the_hub_is_away(
    tmp_path: Path, hub_key: SigningKey
) -> None:
    identity = DeviceIdentity(tmp_path / "identity", "dev-1", (), "_INBOX_dev-1", "hub:7444")
    identity.folder.mkdir()
    asked: list[str] = []

    def fetching(answer: bytes | grpc.StatusCode) -> Callable[[DeviceIdentity], Awaitable[bytes]]:
        async def fetch(who: DeviceIdentity) -> bytes:
            asked.append(who.device_id)
            if isinstance(answer, grpc.StatusCode):
                raise grpc.aio.AioRpcError(answer, grpc.aio.Metadata(), grpc.aio.Metadata(), "no")
            return answer

        return fetch

    away = HubDecisions(identity, "dev-1", fetching(grpc.StatusCode.UNAVAILABLE))
    with pytest.raises(grpc.aio.AioRpcError):  # not a refusal: the command comes back later
        await away.verified(signed(hub_key))
    for answer in (b"not a key", grpc.StatusCode.UNIMPLEMENTED):  # no key to be had: refused
        with pytest.raises(MessageRejected, match=r"no (hub )?key"):
            await HubDecisions(identity, "dev-1", fetching(answer)).verified(signed(hub_key))
    assert identity.hub_key() is None
    fetched = HubDecisions(identity, "dev-1", fetching(hub_key.public_key))
    assert (await fetched.verified(signed(hub_key))).approver == "operator:alice"
    assert (await fetched.verified(signed(hub_key))).approver == "operator:alice"
    assert identity.hub_key() == HubKey.from_raw(hub_key.public_key)  # kept: asked once
    assert len(asked) == 4
