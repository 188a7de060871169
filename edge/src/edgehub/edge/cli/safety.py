"""``edgehub approvals ...``, ``edgehub policy ...`` and ``edgehub pii ...``: the operator's side."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgehub.cli.common import ConfigOpt, ExitCode, JsonOpt, console, err, exit_with, fail

from ..errors import EdgeError
from ..safety.approvals import Approver, decide, local_approvals_allowed
from ..safety.effects import analyse
from ..safety.pii import unmask
from ..safety.policy import Policy, PolicyEngine, default_policy_text
from ..safety.vault import VaultKey
from ..uplink.identity import DeviceIdentity
from .areas import APPROVALS, PII, POLICY
from .common import agent_id as agent_id_arg
from .common import approval_key, load, open_store, read_store
from .render import dumps

approvals_app = typer.Typer(help=APPROVALS.help, no_args_is_help=True)
policy_app = typer.Typer(help=POLICY.help, no_args_is_help=True)
pii_app = typer.Typer(help=PII.help, no_args_is_help=True)


@approvals_app.command("list")
def approvals_list(
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    all_: Annotated[bool, typer.Option("--all", help="Decided ones too.")] = False,
) -> None:
    """List approvals (pending ones by default; none: nothing on stdout, exit status 0). Read-only."""
    store = read_store(load(config))
    items = store.list_approvals(None if all_ else "pending") if store is not None else []
    if as_json:
        for a in items:
            print(dumps({k: v for k, v in dataclasses.asdict(a).items() if k != "proposal_json"}))
        return
    if not items:
        err.print("no approvals on this device" if all_ else "no pending approvals on this device")
        return
    table = Table("tool", "arguments", "rule (policy)", "status", "decided by", "how")
    table.add_column("key", no_wrap=True, overflow="fold")
    for a in items:
        how = {"hub": "signed by the hub", "local": "on the device"}.get(a.decided_via, "")
        policy = f"hub v{a.policy_version}" if a.policy_version else "local"
        table.add_row(a.tool, a.args_json[:70], f"{a.rule} ({policy})", a.status, a.decided_by, how, a.key)
    console.print(table)


@approvals_app.command("decide")
def approvals_decide(
    key: Annotated[
        str,
        typer.Argument(help="The approval's key (AGENT/STEP), from `approvals list`.", callback=approval_key),
    ],
    approve: Annotated[bool, typer.Option("--approve/--deny", help="Let the call run, or refuse it.")],
    note: Annotated[str, typer.Option(help="Why (shown to the agent and recorded).")] = "",
    config: ConfigOpt = None,
) -> None:
    """Approve or deny a paused call on this device; the agent resumes (a denied call becomes its
    observation). Recorded as local:<your OS user>. Allowed by the setting safety.local_approvals: by default
    only on a device not enrolled with a hub; an enrolled device is decided through the hub
    (`edgehub agents decide`), which signs the decision in your API token's name."""
    cfg = load(config)
    try:
        enrolled = DeviceIdentity.load(cfg.identity_dir, cfg.device.id) is not None
    except EdgeError as exc:  # an unreadable identity: enroll again
        fail(exc)
    if not local_approvals_allowed(cfg.safety.local_approvals, enrolled):
        why = "this device is enrolled with a hub" if enrolled else "[safety] local_approvals is off"
        fail(
            f"decisions on the device are off ({why}): decide through the hub with "
            '`edgehub agents decide KEY --approve|--deny`, or set [safety] local_approvals = "on"',
            ExitCode.FAILED,
        )
    store = open_store(cfg)
    try:
        decided = decide(store, key, approve=approve, approver=Approver.local(), note=note)
    except EdgeError as exc:
        fail(exc, ExitCode.FAILED)
    console.print(f"{decided.key}: {decided.status} by {decided.decided_by} (on the device)")


@policy_app.command("check")
def policy_check(
    path: Annotated[Path | None, typer.Argument(help="Policy file (default: the configured one).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Validate a policy file and list its rules in the order they are tried."""
    cfg = load(config)
    path = path or cfg.safety.policy
    try:
        policy = PolicyEngine(path).policy
    except EdgeError as exc:
        fail(exc)
    table = Table("#", "rule", "effect", "tools", "when arguments match", "network", "reason")
    table.title = f"{policy.source} (digest {policy.digest}); a call no rule matches is denied"
    for i, rule in enumerate(policy.rules, 1):
        src = rule.source
        when = "; ".join(f"{k}: {' | '.join(v)}" for k, v in src.args.items())
        if src.effects is not None:
            when = "; ".join(filter(None, [when, f"effects: {' | '.join(src.effects)}"]))
        hosts = ", ".join(src.network)
        table.add_row(str(i), rule.id, rule.effect, ", ".join(src.tools), when, hosts, src.reason)
    console.print(table)


@policy_app.command("try")
def policy_try(
    tool: Annotated[str, typer.Argument(help="Tool name.")],
    args: Annotated[str, typer.Argument(help='Arguments as JSON, e.g. \'{"command": "ls"}\'.')] = "{}",
    config: ConfigOpt = None,
) -> None:
    """Show what the policy decides for one call, which rule decides it and, for a command, what each
    simple command in it does (the effects rules match)."""
    cfg = load(config)
    try:
        parsed = json.loads(args)
        engine = PolicyEngine(cfg.safety.policy)
    except json.JSONDecodeError as exc:
        fail(f"arguments are not valid JSON: {exc}")
    except EdgeError as exc:
        fail(exc)
    if not isinstance(parsed, dict):
        fail("arguments must be a JSON object")
    v = engine.decide(tool, parsed)
    console.print(f"{v.effect} (rule {v.rule}): {v.reason}", markup=False, highlight=False, soft_wrap=True)
    if isinstance(parsed.get("command"), str):
        for cmd in analyse(parsed["command"]).commands:
            console.print(f"  effects of {cmd.describe()}", markup=False, highlight=False, soft_wrap=True)
    if v.effect != "allow":
        exit_with(ExitCode.FAILED)


@policy_app.command("default")
def policy_default() -> None:
    """Print the built-in default policy (a starting point for your own)."""
    print(default_policy_text(), end="")
    Policy.parse(default_policy_text(), source="default")


@pii_app.command("unmask")
def pii_unmask(
    text: Annotated[str, typer.Argument(help="Text with tokens like <EMAIL_abcdefghij>; - reads stdin.")],
    config: ConfigOpt = None,
) -> None:
    """Restore masked values from this device's vault (only the device that masked them can). Read-only:
    on a device with no store the text is printed as it is (nothing was masked here)."""
    cfg = load(config)
    if text == "-":
        text = typer.get_text_stream("stdin").read()
    store = read_store(cfg)
    if store is None or not cfg.vault_key_path.exists():
        err.print("nothing was masked on this device (it has no store or vault key)")
        print(text)
        return
    try:
        print(unmask(text, store.vault_get, VaultKey.load(cfg.vault_key_path)))
    except EdgeError as exc:
        fail(exc, ExitCode.FAILED)


@pii_app.command("outgoing")
def pii_outgoing(
    agent_id: Annotated[
        str, typer.Argument(help="Agent whose outgoing (masked) events to show.", callback=agent_id_arg)
    ],
    config: ConfigOpt = None,
) -> None:
    """Show an agent's not yet delivered events exactly as they will leave the device (PII masked).
    Read-only: none (or no store) prints nothing, exit status 0."""
    store = read_store(load(config))
    for entry in store.outbox_pending(limit=100_000) if store is not None else []:
        if entry.event.agent_id == agent_id:
            step = entry.event.step
            shown = {"thought": step.thought, "action": step.action.args_json, "detail": step.detail}
            print(dumps({"seq": entry.seq, **shown, "observation": step.observation.output}))
