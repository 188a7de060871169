"""``edgehub models rollout|status|rollback``: parity-gated rollouts through the hub's gRPC API
(``fleet/rollouts.py``): run a model in shadow on waves of devices, watch each wave's divergence and
decision, roll back."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edgehub.cli.common import JsonOpt, console
from edgehub.protocol.v1 import hub_pb2, models_pb2

from .api import DEFAULT_API, ApiOpt, as_json_line, call
from .areas import MODELS
from .policy import SELECTOR_HELP, parse_selector

H, M = hub_pb2, models_pb2
models_app = typer.Typer(help=MODELS.help, no_args_is_help=True)
WAVES_HELP = (
    "Waves, each the rollout's cumulative extent after it: device counts (1), shares of the selected "
    "devices (50%) or all; e.g. 1,50%,all."
)
STATE_STYLE = {"promoted": "green", "shadowing": "yellow", "halted": "red", "rolled_back": "magenta"}


def _print(record: M.RolloutRecord, as_json: bool, *, examples: bool = True) -> None:
    if as_json:
        print(as_json_line(record))
        return
    style = STATE_STYLE.get(record.state, "default")
    console.print(
        f"rollout {record.rollout_id}: {escape(record.name)} ({record.sha256[:12]}) to "
        f"{escape(record.selector)}, window {record.window} steps, threshold {record.threshold:.2f}: "
        f"[{style}]{record.state}[/]"
    )
    console.print(f"  {escape(record.decision)}")
    if record.ignored_steps:
        console.print(f"  {record.ignored_steps} shadow steps ignored (not from the wave in shadow)")
    table = Table("wave", "devices", "state", "steps", "divergence")
    for i, wave in enumerate(record.waves, 1):
        s = STATE_STYLE.get(wave.state, "")
        table.add_row(
            str(i),
            ", ".join(wave.device_ids),
            f"[{s}]{wave.state}[/]" if s else wave.state,
            str(wave.steps),
            f"{wave.divergence:.3f}" if wave.steps else "-",
        )
    console.print(table)
    if examples:
        _examples(record)


def _examples(record: M.RolloutRecord) -> None:
    for i, wave in enumerate(record.waves, 1):
        for ex in wave.examples[:3]:
            shadow = ex.shadow_error or f"{ex.shadow_tool} {ex.shadow_args}"
            console.print(
                f"  wave {i} {ex.device_id}/{ex.agent_id} step {ex.step}: divergence {ex.divergence:.2f}\n"
                f"    current: {escape(ex.current_tool)} {escape(ex.current_args)} "
                f"- {escape(ex.current_thought)}\n"
                f"    shadow:  {escape(shadow)} - {escape(ex.shadow_thought)}"
            )  # what a device's models wrote: escaped


@models_app.command("rollout")
def models_rollout(
    sha256: Annotated[str, typer.Argument(help="The new model's SHA-256 (64 hex digits).")],
    devices: Annotated[str, typer.Option("--devices", help=SELECTOR_HELP)],
    waves: Annotated[str, typer.Option("--waves", help=WAVES_HELP)] = "all",
    window: Annotated[
        int, typer.Option("--window", min=1, help="Shadow steps per wave that decide it.")
    ] = 20,
    threshold: Annotated[
        float,
        typer.Option(
            "--threshold", min=0.001, max=1.0, help="Mean divergence (0..1) above which the rollout halts."
        ),
    ] = 0.25,
    name: Annotated[str, typer.Option(help="A name for the model (default: its hash's start).")] = "",
    api: ApiOpt = DEFAULT_API,
    as_json: JsonOpt = False,
) -> None:
    """Run a model in shadow on the first wave; each wave is promoted when its shadow proposals stay
    within the threshold over the window, or the rollout halts. Needs operator."""
    req = H.StartRolloutRequest(
        sha256=sha256.strip().lower(),
        name=name,
        target=parse_selector(devices),
        waves=waves,
        window=window,
        threshold=threshold,
    )
    _print(call(api, lambda s: s.StartRollout(req, timeout=30)), as_json, examples=False)


@models_app.command("status")
def models_status(
    rollout: Annotated[str, typer.Argument(help="A rollout id (default: every rollout).")] = "",
    api: ApiOpt = DEFAULT_API,
    as_json: JsonOpt = False,
) -> None:
    """Each wave's divergence, the steps that differ most, and the decision."""
    reply = call(api, lambda s: s.RolloutStatus(H.RolloutStatusRequest(rollout_id=rollout), timeout=30))
    for record in reply.rollouts:
        _print(record, as_json)
    if not reply.rollouts and not as_json:
        console.print("no rollouts")


@models_app.command("rollback")
def models_rollback(
    rollout: Annotated[str, typer.Argument(help="The rollout id.")],
    api: ApiOpt = DEFAULT_API,
    as_json: JsonOpt = False,
) -> None:
    """Stop the rollout's shadows; its promoted waves go back to the model each device ran before."""
    req = H.RollbackRolloutRequest(rollout_id=rollout)
    _print(call(api, lambda s: s.RollbackRollout(req, timeout=30)), as_json, examples=False)
