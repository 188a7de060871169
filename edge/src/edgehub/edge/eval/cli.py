"""``edgehub eval ...``: run an evaluation suite on a model, and compare two evaluations.

edgehub eval run [--suite core] [--model PATH] [--repeat N] [--set agent.plan=false] [--json]
edgehub eval compare A.json B.json
edgehub eval goals [--suite core]
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from ..cli.areas import EVAL
from ..config import EdgeConfig, load_config
from ..errors import EdgeError
from ..jsontypes import JsonObject
from .compare import compare, comparison_rows
from .report import Report, category_row, goal_rows, summary_rows
from .runner import EvalRunner, RunOptions, make_report
from .suite import load_suite

console = Console()
err = Console(stderr=True, soft_wrap=True)
eval_app = typer.Typer(help=EVAL.help)

SuiteOpt = Annotated[str, typer.Option("--suite", "-s", help="A bundled suite's name or a suite .toml file.")]


def fail(exc: BaseException | str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(code)


def parse_settings(items: list[str]) -> dict[str, JsonObject]:
    """``section.key=value`` items (values as JSON where they parse, else text) as a config tree."""
    tree: dict[str, JsonObject] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not section or not name:
            raise typer.BadParameter(f"{item!r}: expected SECTION.KEY=VALUE (e.g. agent.plan=false)")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        tree.setdefault(section, {})[name] = value
    try:
        EdgeConfig.model_validate(tree)
    except ValueError as exc:
        raise typer.BadParameter(str(exc).splitlines()[0] + ": " + str(exc).splitlines()[-1]) from None
    return tree


def git_commit() -> str:
    """The source tree's commit (``+dirty`` when changed), or '' outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True
        )
        return head + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return ""


def machine() -> str:
    """This machine as reports name it (``edgehub.hardware``'s detection)."""
    import platform

    from edgehub.hardware import detect

    m = detect()
    memory = f"{m.memory_mb / 1024:.0f} GiB"
    return f"{m.cpu_model or m.arch}, {m.usable_cores} cores, {memory}, Linux {platform.release()}"


def print_report(report: Report, *, goals: bool = True) -> None:
    title = f"{report.suite} r{report.revision} on {report.model} ({report.prompt_format})"
    table = Table("tier", "success (95% CI)", "steps", "tokens", "s/run", title=title)
    for row in summary_rows(report):
        table.add_row(*row)
    console.print(table)
    if goals:
        per_goal = Table("goal", "tier", "ok", "failure", "tools (first run)", "first failed check")
        for row in goal_rows(report):
            per_goal.add_row(*row)
        console.print(per_goal)
    console.print(f"failures by category: {category_row(report)}")
    console.print(
        f"finished but wrong: {report.false_finishes()} of {sum(r.finished for r in report.runs)} "
        f"finished runs; finish check said verified but the checks failed: {report.verified_but_wrong()}"
    )


@eval_app.command("run")
def eval_run(
    suite: SuiteOpt = "core",
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="edge.toml the runs start from (default: defaults)")
    ] = None,
    model: Annotated[Path | None, typer.Option("--model", "-m", help="GGUF file (default: config's)")] = None,
    repeat: Annotated[int, typer.Option(min=1, help="Runs of each goal.")] = 1,
    goal: Annotated[list[str] | None, typer.Option("--goal", "-g", help="Only these goal ids.")] = None,
    tier: Annotated[list[str] | None, typer.Option("--tier", "-t", help="Only these tiers.")] = None,
    ci: Annotated[bool, typer.Option("--ci", help="Only the CI-sized subset.")] = False,
    settings: Annotated[
        list[str] | None, typer.Option("--set", help="SECTION.KEY=VALUE config change (repeatable).")
    ] = None,
    label: Annotated[str, typer.Option(help="A name for this run in reports.")] = "",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the report (JSON) here.")] = None,
    workdir: Annotated[Path | None, typer.Option(help="Keep the runs' data dirs here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Run a suite's goals on the real model and judge each by its side effects and answer.

    Exit status: 0 when it ran (whatever the success rate), 2 on a usage or configuration error."""
    logging.basicConfig(level="WARNING")
    try:
        the_suite = load_suite(suite)
        goals = the_suite.select(ids=goal or [], tiers=tier or [], ci_only=ci)
        base = load_config(config)
    except EdgeError as exc:
        fail(exc)
    overrides = parse_settings(settings or [])
    if model is not None:
        overrides.setdefault("model", {})["path"] = str(model)
    options = RunOptions(base=base, overrides=overrides, repeat=repeat, workdir=workdir, label=label)
    report = run_suite(the_suite, goals, options, progress=not as_json, partial=out)
    if out is not None:
        report.save(out)
    if as_json:
        print(report.to_json())
    else:
        print_report(report)


def run_suite(
    suite: Any, goals: list[Any], options: RunOptions, *, progress: bool = True, partial: Path | None = None
) -> Report:
    """Open the model the options name, run ``goals`` and return the report; ``partial``: rewrite the
    report there after every run, so a run that is stopped leaves what it measured."""
    from ..agent.prompt import form
    from ..brain import open_brain  # loads llama.cpp: only when a run starts

    cfg = options.config(Path("/nonexistent"), goals[0], suite.max_steps) if goals else options.base
    try:
        brain = open_brain(cfg.model)
    except EdgeError as exc:
        fail(exc)

    done: list[Any] = []

    def report(runs: list[Any]) -> Report:
        return make_report(
            suite,
            options,
            runs,
            model=Path(str(brain.path)).name,
            prompt_format=form(brain.chat_format, cfg.agent.prompt_format),
            machine=machine(),
            commit=git_commit(),
        )

    def show(run: Any) -> None:
        done.append(run)
        if partial is not None:
            report(done).save(partial)
        if progress:
            mark = "[green]ok[/]" if run.success else f"[red]{run.category}[/]"
            err.print(f"{run.goal_id} #{run.repeat}: {mark} {run.steps} steps {run.wall_s:.0f} s")

    try:
        runs = asyncio.run(EvalRunner(suite, options, brain).run(goals, on_run=show))
    finally:
        brain.close()
    return report(runs)


@eval_app.command("compare")
def eval_compare(
    a: Annotated[Path, typer.Argument(help="The baseline report (JSON).")],
    b: Annotated[Path, typer.Argument(help="The report to compare with it.")],
    alpha: Annotated[float, typer.Option(help="Significance level.")] = 0.05,
) -> None:
    """What changed between two reports of the same suite, and whether it is significant
    (McNemar's exact test on the goals both ran)."""
    try:
        result = compare(Report.load(a), Report.load(b))
    except EdgeError as exc:
        fail(exc)
    table = Table("", "A", "B", "change")
    for row in comparison_rows(result):
        table.add_row(*row)
    console.print(table)
    for line in result.changed_goals():
        console.print(line)
    test = result.test
    verdict = "significant" if test.significant(alpha) else "not significant"
    console.print(
        f"paired runs: {test.pairs}; B gained {test.gained}, lost {test.lost}; "
        f"p = {test.p_value:.3g} ({verdict} at {alpha:g})"
    )


@eval_app.command("goals")
def eval_goals(suite: SuiteOpt = "core") -> None:
    """List a suite's goals."""
    try:
        the_suite = load_suite(suite)
    except EdgeError as exc:
        fail(exc)
    table = Table("goal", "tier", "ci", "goal text", title=f"{the_suite.name} r{the_suite.revision}")
    for g in the_suite.goals:
        table.add_row(g.id, g.tier, "yes" if g.ci else "", g.goal)
    console.print(table)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(eval_app())
