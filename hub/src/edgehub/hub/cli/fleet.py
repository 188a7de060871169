"""``edgehub devices ...``, ``edgehub agents ...``, ``edgehub tokens ...`` and ``edgehub knowledge ...``:
the fleet through the hub's gRPC API (credentials: ``api.py``)."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edgehub.cli.common import ExitCode, JsonOpt, console, exit_with, fail
from edgehub.protocol.errors import EdgehubError
from edgehub.protocol.v1 import hub_pb2, models_pb2, scope_pb2, twin_pb2

from ..fleet.agents import status_name
from ..fleet.migration import IN_FLIGHT, phase_name
from ..fleet.scopes import Scope, describe_labels, parse_labels
from .api import DEFAULT_API, ApiOpt, as_json_line, call
from .areas import AGENTS, DEVICES, KNOWLEDGE, TOKENS

H = hub_pb2
T = twin_pb2

devices_app = typer.Typer(help=DEVICES.help, no_args_is_help=True)
agents_app = typer.Typer(help=AGENTS.help, no_args_is_help=True)
knowledge_app = typer.Typer(help=KNOWLEDGE.help, no_args_is_help=True)


def _state(d: H.Device) -> str:
    online = "[green]yes[/]" if d.online else "[red]no[/]"
    if d.twin.state == T.DEVICE_STATE_RESTRICTED:  # heartbeats arrive, but no agent runs there
        online = "[red]restricted[/]" if d.last_seen_s <= 3 * d.twin.heartbeat_s else online
    paused = " (agents paused: disk full)" if d.twin.paused_reason else ""
    return online + (" (draining)" if d.twin.draining else "") + paused


def _labels(d: H.Device) -> str:
    """The hub's labels, then what the device reports of itself."""
    ours, theirs = describe_labels(d.labels), describe_labels(d.twin.labels)
    shown = ((ours or "-") + (f" (reports {theirs})" if theirs else "")).replace(",", ", ")
    return escape(shown)  # a device's own labels are any text it likes, markup included


def _parsed(texts: list[str], field: str) -> dict[str, str]:
    """``KEY=VALUE[,KEY=VALUE]`` options as labels; a usage error (exit 2) when one is not."""
    try:
        return parse_labels(texts, field)
    except EdgehubError as exc:
        fail(exc.message, ExitCode.ERROR)


LabelOpt = Annotated[
    list[str],
    typer.Option(
        "--label",
        "-l",
        help="A label the hub assigns the device, KEY=VALUE (repeat, or KEY=VALUE,KEY=VALUE): what "
        "operator scopes select by. None given: the labels the device has now.",
    ),
]


@devices_app.command("list")
def devices_list(api: ApiOpt = DEFAULT_API, as_json: JsonOpt = False) -> None:
    """Devices with their reported twin; online = heartbeats arriving."""
    reply = call(api, lambda s: s.ListDevices(H.ListDevicesRequest(), timeout=10))
    if as_json:
        for d in reply.devices:
            print(as_json_line(d))
        return
    table = Table("device", "online", "last seen", "version", "load", "agents running", "outbox", "labels")
    for d in reply.devices:
        t = d.twin
        table.add_row(
            d.device_id,
            _state(d),
            f"{d.last_seen_s:.0f} s ago",
            t.version,
            f"{t.load:.2f}",
            ", ".join(a or "?" for a in t.agents_running) or "-",
            str(t.outbox_depth),
            _labels(d),
        )
    console.print(table)


@devices_app.command("get")
def devices_get(device_id: str, api: ApiOpt = DEFAULT_API, as_json: JsonOpt = False) -> None:
    """One device and its twin."""
    d = call(api, lambda s: s.GetDevice(H.GetDeviceRequest(device_id=device_id), timeout=10))
    if as_json:
        print(as_json_line(d))
        return
    t = d.twin
    hw, profile = t.hardware, t.profile.name or t.profile.error or "-"
    for name, value in (
        ("device", d.device_id),
        ("online", f"{_state(d)}, last seen {d.last_seen_s:.0f} s ago, every {t.heartbeat_s:g} s"),
        ("state", T.DeviceState.Name(t.state).removeprefix("DEVICE_STATE_").lower()),
        ("version", t.version),
        ("hardware", f"{hw.arch}, {hw.cpus} cpus, kernel {hw.kernel}; profile {profile}"),
        (
            "model",
            f"{t.model_name or '-'} ({t.model[:16] or 'no fingerprint'}; {t.model_sha256[:12] or '-'})",
        ),
        ("models", escape(", ".join(_held(m) for m in t.models)) or "-"),
        ("load", f"{t.load:.2f}; outbox {t.outbox_depth}"),
        ("agents", f"{', '.join(a or '?' for a in t.agents_running) or '-'} (at most {t.max_concurrent})"),
        ("paused", escape(t.paused_reason) or "-"),
        ("tools", ", ".join(t.tools) or "-"),
        ("labels", _labels(d)),
        ("memories", ", ".join(t.memories) or "-"),
        *((("why", escape(t.restricted)), ("held", ", ".join(t.agents_held) or "-")) if t.restricted else ()),
    ):
        console.print(f"[bold]{name:>9}[/] {value}")


def _held(m: models_pb2.HeldModel) -> str:
    """A model the device holds, as ``devices get`` shows it (a device's error is text it wrote)."""
    if m.state == "fetching":
        return f"{m.name} {m.sha256[:12]} fetching {m.have * 100 // max(m.size, 1)}%"
    return f"{m.name} {m.sha256[:12]} {m.state}" + (f" ({m.error})" if m.error else "")


@devices_app.command("drain")
def devices_drain(
    device_id: str,
    reason: Annotated[str, typer.Option(help="Recorded with the command.")] = "drained by an operator",
    resume: Annotated[bool, typer.Option("--resume", help="Undo a drain: take new agents again.")] = False,
    api: ApiOpt = DEFAULT_API,
) -> None:
    """Let the device finish its running agents and take no new ones."""
    req = H.DrainDeviceRequest(device_id=device_id, reason=reason, resume=resume)
    reply = call(api, lambda s: s.DrainDevice(req, timeout=10))
    console.print(f"{'resume' if resume else 'drain'} sent to {reply.device_id} (command {reply.command_id})")


@devices_app.command("revoke")
def devices_revoke(
    device_id: str,
    reason: Annotated[str, typer.Option(help="Recorded with the revocation.")] = "revoked by an operator",
    api: ApiOpt = DEFAULT_API,
    as_json: JsonOpt = False,
) -> None:
    """Revoke a device's credentials: its NATS connections are closed and refused, its certificates no
    longer open the device API. Enrolling it again (a new token) gives it new ones. Needs admin."""
    reply = call(
        api, lambda s: s.RevokeDevice(H.RevokeDeviceRequest(device_id=device_id, reason=reason), timeout=30)
    )
    if as_json:
        print(as_json_line(reply))
        return
    console.print(
        f"revoked {reply.device_id}: {len(reply.user_keys)} NATS user keys, its certificates until now"
    )
    if not reply.applied:
        console.print(
            "[yellow]this hub's NATS is external:[/] push the account JWT below to its resolver "
            "(e.g. nsc push, or a $SYS claims update) to close the device's connections"
        )
        print(reply.account_jwt)


@devices_app.command("enroll-token")
def devices_enroll_token(
    device_id: str,
    ttl: Annotated[int, typer.Option(help="Seconds the token stays valid.")] = 3600,
    label: LabelOpt = [],  # noqa: B006 - typer reads the default, never mutates it
    api: ApiOpt = DEFAULT_API,
    as_json: JsonOpt = False,
) -> None:
    """A one-time token with which DEVICE_ID can enroll (`edgehub edge enroll`); the device gets the
    labels given (`--label site=plant-a`). Needs an admin token; a scoped admin may give only labels
    that put the device in its scope."""
    labels = _parsed(label, "--label")
    req = H.CreateEnrollmentTokenRequest(device_id=device_id, ttl_s=ttl, labels=labels)
    reply = call(api, lambda s: s.CreateEnrollmentToken(req, timeout=10))
    if as_json:
        print(as_json_line(reply))
        return
    shown = describe_labels(reply.labels) or "no labels"
    console.print(f"enrollment token for {device_id} (one use, {ttl} s; labels: {shown}):")
    print(reply.token)


@devices_app.command("label")
def devices_label(
    device_id: str,
    labels: Annotated[
        list[str] | None,
        typer.Argument(help="KEY=VALUE labels, replacing the device's (site=plant-a line=3)."),
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove every label the hub assigned.")] = False,
    api: ApiOpt = DEFAULT_API,
) -> None:
    """Set the labels the hub assigns DEVICE_ID: what operator scopes (`edgehub tokens create --scope`)
    select by; the labels a device reports of itself never count. Needs an admin token; a scoped admin
    relabels only a device in its scope, into its scope."""
    if not labels and not clear:
        fail("give KEY=VALUE labels, or --clear to remove them all", ExitCode.ERROR)
    req = H.SetDeviceLabelsRequest(device_id=device_id, labels=_parsed(labels or [], "labels"))
    reply = call(api, lambda s: s.SetDeviceLabels(req, timeout=10))
    console.print(f"{reply.device_id}: {describe_labels(reply.labels) or 'no labels'}")


tokens_app = typer.Typer(
    help=TOKENS.help,
    no_args_is_help=True,
)


def _scope(pb: scope_pb2.Scope) -> str:
    return str(Scope.from_proto(pb))


@tokens_app.command("create")
def tokens_create(
    name: str,
    role: Annotated[
        str, typer.Option(help="viewer (read), operator (act on agents/devices), admin.")
    ] = "viewer",
    days: Annotated[float, typer.Option(help="Expire after this many days (0: never).", min=0)] = 0.0,
    scope: Annotated[
        list[str],
        typer.Option(
            "--scope",
            help="Reach only devices the hub labelled so: KEY=VALUE, or KEY=VALUE,KEY=VALUE for "
            "devices carrying all of them; repeat for more (a device matching any is in scope).",
        ),
    ] = [],  # noqa: B006 - typer reads the default, never mutates it
    scope_device: Annotated[
        list[str], typer.Option("--scope-device", help="Reach this device whatever its labels (repeat).")
    ] = [],  # noqa: B006
    api: ApiOpt = DEFAULT_API,
) -> None:
    """A new bearer token for NAME; printed once (the hub keeps only its hash). Without --scope or
    --scope-device it reaches the whole fleet. Needs admin; a scoped admin may give only a scope within
    its own."""
    roles = {"viewer": H.ROLE_VIEWER, "operator": H.ROLE_OPERATOR, "admin": H.ROLE_ADMIN}
    if role not in roles:
        fail(f"unknown role {role!r} (viewer, operator, admin)")
    selectors = [scope_pb2.LabelSelector(labels=_parsed([one], "--scope")) for one in scope]
    wanted = scope_pb2.Scope(selectors=selectors, devices=scope_device)
    req = H.CreateApiTokenRequest(name=name, role=roles[role], ttl_s=days * 86400, scope=wanted)
    reply = call(api, lambda s: s.CreateApiToken(req, timeout=10))
    print(reply.token)


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "never"


@tokens_app.command("list")
def tokens_list(api: ApiOpt = DEFAULT_API, as_json: JsonOpt = False) -> None:
    """Operator tokens: name, role, who made them, when they expire (never the secrets). Needs admin."""
    reply = call(api, lambda s: s.ListApiTokens(H.ListApiTokensRequest(), timeout=10))
    if as_json:
        for tok in reply.tokens:
            print(as_json_line(tok))
        return
    table = Table("name", "role", "scope", "id", "created by", "created", "expires")
    now = time.time()
    for tok in reply.tokens:
        expired = " (expired)" if tok.expires_at and tok.expires_at <= now else ""
        role = H.Role.Name(tok.role).removeprefix("ROLE_").lower()
        when = (_when(tok.created_at), _when(tok.expires_at) + expired)
        table.add_row(tok.name, role, _scope(tok.scope), tok.id, tok.created_by, *when)
    console.print(table)


@tokens_app.command("delete")
def tokens_delete(name: str, api: ApiOpt = DEFAULT_API) -> None:
    """Delete every token of operator NAME (they stop working within 5 s). Needs admin."""
    reply = call(api, lambda s: s.DeleteApiTokens(H.DeleteApiTokensRequest(name=name), timeout=10))
    console.print(f"deleted {reply.deleted} token(s) of {name}")


@tokens_app.command("whoami")
def tokens_whoami(api: ApiOpt = DEFAULT_API) -> None:
    """Who the hub takes you for, your role and your scope."""
    me = call(api, lambda s: s.WhoAmI(H.WhoAmIRequest(), timeout=10))
    role = H.Role.Name(me.role).removeprefix("ROLE_").lower()
    console.print(f"{me.name} ({role}; scope: {_scope(me.scope)})")


@agents_app.command("list")
def agents_list(
    device: Annotated[str, typer.Option("--device", "-d", help="Only this device's agents.")] = "",
    api: ApiOpt = DEFAULT_API,
    as_json: JsonOpt = False,
) -> None:
    """Agents the hub knows of, with owner device and status."""
    reply = call(api, lambda s: s.ListAgents(H.ListAgentsRequest(device_id=device), timeout=10))
    if as_json:
        for a in reply.agents:
            print(as_json_line(a))
        return
    table = Table("agent", "device", "status", "step", "detail")
    for a in reply.agents:
        table.add_row(a.agent_id, a.device_id, status_name(a.status), str(a.step), a.detail[:60])
    console.print(table)


@agents_app.command("get")
def agents_get(agent_id: str, api: ApiOpt = DEFAULT_API) -> None:
    """One agent's registry record (JSON: owner, epoch, status, step, migration history)."""
    print(as_json_line(call(api, lambda s: s.GetAgent(H.GetAgentRequest(agent_id=agent_id), timeout=10))))


@agents_app.command("start")
def agents_start(
    device: Annotated[str, typer.Option("--device", "-d", help="Device to run it on.")],
    goal: Annotated[str, typer.Option("--goal", "-g", help="What the agent should achieve.")],
    agent_id: Annotated[str, typer.Option(help="Agent id (default: assigned by the hub).")] = "",
    api: ApiOpt = DEFAULT_API,
) -> None:
    """Start an agent on a device (it runs when the device is online; started once)."""
    req = H.StartAgentRequest(device_id=device, goal=goal, agent_id=agent_id)
    reply = call(api, lambda s: s.StartAgent(req, timeout=10))
    console.print(f"agent {reply.agent_id} (command {reply.command_id} to {device})")


@agents_app.command("stop")
def agents_stop(
    agent_id: str,
    reason: Annotated[str, typer.Option(help="Recorded as the stop reason.")] = "stopped by an operator",
    device: Annotated[str, typer.Option("--device", "-d", help="Default: the agent's owner.")] = "",
    api: ApiOpt = DEFAULT_API,
) -> None:
    """Stop an agent after its current step (checkpointed); audited under your token's name."""
    req = H.StopAgentRequest(agent_id=agent_id, device_id=device, reason=reason)
    reply = call(api, lambda s: s.StopAgent(req, timeout=10))
    console.print(f"stop sent to {reply.device_id} (command {reply.command_id})")


@agents_app.command("decide")
def agents_decide(
    key: Annotated[str, typer.Argument(help="Approval key AGENT/STEP.")],
    approve: Annotated[bool, typer.Option("--approve/--deny", help="Let the call run, or refuse it.")],
    note: Annotated[str, typer.Option(help="Why (and on whose behalf, if not your own).")] = "",
    device: Annotated[str, typer.Option("--device", "-d", help="Default: the agent's owner.")] = "",
    api: ApiOpt = DEFAULT_API,
) -> None:
    """Send an approval decision to the device where the agent waits, signed by the hub in your API
    token's name (the device applies no other; it is recorded as operator:<token name>)."""
    req = H.DecideApprovalRequest(key=key, device_id=device, approve=approve, note=note)
    reply = call(api, lambda s: s.DecideApproval(req, timeout=10))
    console.print(f"decision sent to {reply.device_id} (command {reply.command_id})")


def _show_migration(m: H.Migration, as_json: bool) -> None:
    if as_json:
        print(as_json_line(m))
        return
    phase = phase_name(m.phase)
    line = f"migration {m.migration_id}: {m.agent_id} {m.source_device} -> {m.target_device}, {phase}"
    if m.phase in (H.MIGRATION_PHASE_IMPORTING, H.MIGRATION_PHASE_DONE, H.MIGRATION_PHASE_ROLLED_BACK):
        line += f" at step {m.step}, epoch {m.from_epoch} -> {m.to_epoch}, {m.bytes:,} bytes"
    if m.resumed_at and m.stopped_at:
        line += f"; stop to resume {1000 * (m.resumed_at - m.stopped_at):.0f} ms"
    console.print(line)
    if m.error:
        console.print(f"  [yellow]{m.error}[/]")


@agents_app.command("migrate")
def agents_migrate(
    agent_id: str,
    to: Annotated[str, typer.Option("--to", help="The device to move the agent to.")],
    wait: Annotated[float, typer.Option(help="Seconds to wait for the outcome (0: do not wait).")] = 60.0,
    api: ApiOpt = DEFAULT_API,
    as_json: JsonOpt = False,
) -> None:
    """Move an active agent to another device: it stops at a step boundary on its device, its state
    moves through the hub, and it resumes at the same step on the target (epoch + 1). Exit code 1
    when the migration fails or is rolled back."""
    m = call(
        api, lambda s: s.MigrateAgent(H.MigrateAgentRequest(agent_id=agent_id, to_device=to), timeout=10)
    )
    deadline = time.monotonic() + wait
    while m.phase in IN_FLIGHT and time.monotonic() < deadline:
        time.sleep(0.2)
        m = call(api, lambda s: s.GetMigration(H.GetMigrationRequest(agent_id=agent_id), timeout=10))
    _show_migration(m, as_json)
    if m.phase in (H.MIGRATION_PHASE_FAILED, H.MIGRATION_PHASE_ROLLED_BACK):
        exit_with(ExitCode.FAILED)


@agents_app.command("migration")
def agents_migration(agent_id: str, api: ApiOpt = DEFAULT_API, as_json: JsonOpt = False) -> None:
    """The agent's latest migration and its phase."""
    m = call(api, lambda s: s.GetMigration(H.GetMigrationRequest(agent_id=agent_id), timeout=10))
    _show_migration(m, as_json)


@agents_app.command("trace")
def agents_trace(agent_id: str, api: ApiOpt = DEFAULT_API, as_json: JsonOpt = False) -> None:
    """The agent's mind-log as the hub received it (PII-masked), all pages."""
    token = ""
    while True:
        req = H.TraceAgentRequest(agent_id=agent_id, page_size=500, page_token=token)
        reply = call(api, lambda s, r=req: s.TraceAgent(r, timeout=30))  # type: ignore[misc]
        for e in reply.events:
            if as_json:
                print(as_json_line(e))
            else:
                tool = e.action.tool or "-"
                line = f"{e.action.args_json[:80]} -> {e.observation.output[:80]}"
                console.print(f"step {e.step + 1} [cyan]{tool}[/] {line}")
        token = reply.next_page_token
        if not token:
            return


@knowledge_app.command("consolidate")
def knowledge_consolidate(
    run_id: Annotated[
        str,
        typer.Option(help="Default: derived from the episodes. A recorded run id shows that run."),
    ] = "",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the run.")] = 1800.0,
    api: ApiOpt = DEFAULT_API,
    as_json: JsonOpt = False,
) -> None:
    """Consolidate now: cluster the fleet's pending episodes, abstract each cluster into facts with the
    hub's model, and tell the edges which episodes to prune. Needs an operator token."""
    req = H.ConsolidateRequest(run_id=run_id)
    reply = call(api, lambda s: s.Consolidate(req, timeout=timeout))
    if as_json:
        print(as_json_line(reply))
        return
    if not reply.run_id:
        console.print(f"nothing to consolidate ({reply.episodes_considered} pending episodes, no cluster)")
    else:
        again = " (recorded earlier; nothing done now)" if reply.recorded else ""
        console.print(
            f"run {reply.run_id}{again}: {reply.clusters} clusters, {reply.facts_written} facts written, "
            f"{reply.episodes_consolidated} episodes consolidated, {reply.episodes_settled} settled"
        )
        for p in reply.prune:
            console.print(f"  {p.device_id}: {len(p.keys)} episodes to prune")
    for r in reply.rejected:
        console.print(f"  [yellow]rejected[/] {r.cluster}: {r.reason}")
