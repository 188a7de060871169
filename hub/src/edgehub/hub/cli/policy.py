"""``edgehub policy ...``: fleet policy through the hub's gRPC API (``fleet/policies.py``): push a
policy file to devices, see which version each runs (and which refused it, and why), roll back."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edgehub.cli.common import JsonOpt, console, fail
from edgehub.protocol.v1 import hub_pb2, policy_pb2

from .api import DEFAULT_API, ApiOpt, as_json_line, call
from .areas import POLICY

H = hub_pb2
policy_app = typer.Typer(help=POLICY.help, no_args_is_help=True)
SELECTOR_HELP = (
    "Which devices: `all`, device ids (dev-a,dev-b), or labels every device must carry "
    "(site=plant-a,profile=x86-ipc: the labels the hub assigned, over those the device reports, "
    "with profile, arch and model)."
)


def parse_selector(spec: str) -> H.PolicyTarget:
    """``all`` | ``ID[,ID]`` | ``KEY=VALUE[,KEY=VALUE]`` as a target; a usage error (exit 2) otherwise."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if parts == ["all"]:
        return H.PolicyTarget(all=True)
    pairs = [p.partition("=") for p in parts]
    if not parts or (any(sep for _, sep, _ in pairs) and not all(k and sep and v for k, sep, v in pairs)):
        fail(f"--devices: {spec!r} is not `all`, device ids, or KEY=VALUE labels (not both)")
    if pairs[0][1]:
        return H.PolicyTarget(labels={k: v for k, _, v in pairs})
    return H.PolicyTarget(device_ids=parts)


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode()
    except OSError as exc:
        fail(f"cannot read the policy {path}: {exc.strerror}")
    except UnicodeDecodeError:
        fail(f"the policy {path} is not UTF-8 text")


def _pushed(reply: policy_pb2.PolicyPush, as_json: bool) -> None:
    if as_json:
        print(as_json_line(reply))
        return
    what = f" (the text of version {reply.rollback_of})" if reply.rollback_of else ""
    console.print(
        f"policy version {reply.version}{what}, sha256 {reply.sha256[:12]}, sent to "
        f"{len(reply.devices)} devices: {', '.join(reply.devices)}"
    )


@policy_app.command("push")
def policy_push(
    file: Annotated[Path, typer.Argument(help="The policy file (TOML, as [safety] policy reads).")],
    devices: Annotated[str, typer.Option("--devices", help=SELECTOR_HELP)],
    note: Annotated[str, typer.Option(help="Why (kept with the version).")] = "",
    api: ApiOpt = DEFAULT_API,
    as_json: JsonOpt = False,
) -> None:
    """Push a policy file to devices as the next fleet-wide version, signed by the hub. Needs operator."""
    req = H.PushPolicyRequest(text=_read(file), target=parse_selector(devices), note=note)
    _pushed(call(api, lambda s: s.PushPolicy(req, timeout=30)), as_json)


@policy_app.command("rollback")
def policy_rollback(
    to: Annotated[
        int, typer.Option("--to", help="The version to go back to (default: the one before the latest).")
    ] = 0,
    devices: Annotated[
        str, typer.Option("--devices", help=SELECTOR_HELP + " Default: the latest push's.")
    ] = "",
    api: ApiOpt = DEFAULT_API,
    as_json: JsonOpt = False,
) -> None:
    """Push an earlier version's text again, as a NEW version (devices never go back in version)."""
    req = H.RollbackPolicyRequest(to_version=to)
    if devices:
        req.target.CopyFrom(parse_selector(devices))
    _pushed(call(api, lambda s: s.RollbackPolicy(req, timeout=30)), as_json)


STATE_STYLE = {"current": "green", "pending": "yellow", "refused": "red", "local": "dim"}


@policy_app.command("status")
def policy_status(api: ApiOpt = DEFAULT_API, as_json: JsonOpt = False) -> None:
    """Which version each device was sent and runs, and the last it refused and why."""
    reply = call(api, lambda s: s.PolicyStatus(H.PolicyStatusRequest(), timeout=30))
    if as_json:
        for d in reply.devices:
            print(as_json_line(d))
        return
    if reply.HasField("latest"):
        p = reply.latest
        console.print(
            f"latest: version {p.version} ({p.sha256[:12]}) by {p.pushed_by} to {escape(p.selector)}"
        )
    table = Table("device", "online", "sent", "runs", "state", "refused")
    for d in reply.devices:
        r = d.running
        runs = f"{r.source} v{r.version}" if r.source == "hub" else (r.source or "?")
        refused = (
            f"v{r.refused_version}: {r.refused_reason}" if r.refused_version or r.refused_reason else "-"
        )
        style = STATE_STYLE.get(d.state, "")
        table.add_row(
            d.device_id,
            "yes" if d.online else "no",
            f"v{d.sent_version}" if d.sent_version else "-",
            f"{runs} ({r.sha256[:12]})" if r.sha256 else runs,
            f"[{style}]{d.state}[/]" if style else d.state,
            escape(refused),  # a device's reason is text it wrote
        )
    console.print(table)
