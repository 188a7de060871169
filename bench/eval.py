"""bench/eval: how often agents reach their goals, per model and with each of issue 18's levers on and off.

Runs the evaluation suite (edgehub.edge.eval, ``core``; QUICK=1: its CI subset) through the real edge
daemon, on each model side by side with every lever on, then on the default model with one lever off
at a time: recall distilled -> raw and -> off, the strict grammar -> llama-cpp-python's own, the model's
chat form -> the transcript (only for a model with a chat template), demonstrations chosen -> fixed,
the plan off, the finish check off, the guided steps off; and everything off at once (the prompt before
issue 18). Success is what the goals' checks say, never the agent's status.

Targets (issue 18): >= 80% on the one- and two-tool tiers and >= 50% overall on the default model, and no
run counted a success whose checks failed.

Each configuration's report goes to bench/results/eval/<label>.json (readable by ``edgehub eval
compare``). On a shared 2-core machine a full run takes hours: ONLY=label,label runs just those
configurations, and REUSE=1 takes a configuration's report from an earlier run when it was made from
the same commit, suite revision and QUICK setting (so a run can be split into chunks that each hold the
machine's heavy-job lock briefly); anything else is run again. FROM=a.json,b.json runs nothing: it
judges reports saved earlier (``edgehub eval run --out``; each keyed by its label, the default model's
being its name) and writes the checks, so full-suite runs made one at a time still give
bench/results/eval.json.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import QUICK, RESULTS, Check, print_checks, print_table, write_result

from edgehub.edge.eval.cli import git_commit, run_suite
from edgehub.edge.eval.compare import compare
from edgehub.edge.eval.report import Report
from edgehub.edge.eval.runner import RunOptions
from edgehub.edge.eval.suite import load_suite
from edgehub.llm import ModelFileError, packaged_model_path
from edgehub.llm.chat import chat_format_of
from edgehub.llm.settings import DEFAULT_MODEL_NAME, PACKAGED_MODELS

OUT = RESULTS / "eval"
ALL_OFF = {
    "agent": {
        "recall_style": "raw",
        "prompt_format": "transcript",
        "demonstrations": "fixed",
        "plan": False,
        "finish_check": False,
        "guide": False,
    },
    "model": {"strict_strings": False, "grammar_bounds": 0},
}
LEVERS: list[tuple[str, dict[str, dict[str, Any]]]] = [
    ("recall raw", {"agent": {"recall_style": "raw"}}),
    ("recall off", {"agent": {"recall_tokens": 0}}),
    ("grammar lenient", {"model": {"strict_strings": False, "grammar_bounds": 0}}),
    ("transcript", {"agent": {"prompt_format": "transcript"}}),
    ("fixed demos", {"agent": {"demonstrations": "fixed"}}),
    ("no plan", {"agent": {"plan": False}}),
    ("no finish check", {"agent": {"finish_check": False}}),
    ("no guide", {"agent": {"guide": False}}),
    ("no repeat refusal", {"safety": {"refuse_repeats": False}}),
    ("all off", ALL_OFF),
]


@dataclass(frozen=True)
class Config:
    label: str
    model: str
    """A packaged model's name (edgehub.llm.PACKAGED_MODELS) or a GGUF path."""
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def file(self) -> Path:
        return OUT / f"{self.label.replace(' ', '-')}.json"


def model_file(model: str) -> Path | None:
    if model in PACKAGED_MODELS:
        try:
            return packaged_model_path(model)
        except ModelFileError:
            return None
    return Path(model) if Path(model).is_file() else None


def has_chat_template(path: Path) -> bool:
    from llama_cpp import Llama

    vocab = Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        return chat_format_of(vocab) is not None
    finally:
        vocab.close()


def configs() -> list[Config]:
    """Every model side by side, then the default model with each lever off (the transcript lever
    only for a model with a chat template: for a base model it changes nothing)."""
    models = [m for m in os.environ.get("MODELS", ",".join(PACKAGED_MODELS)).split(",") if m]
    default = DEFAULT_MODEL_NAME if DEFAULT_MODEL_NAME in models else models[0]
    out = [Config(f"{m}", m) for m in models if model_file(m) is not None]
    path = model_file(default)
    chat = path is not None and has_chat_template(path)
    levers = [(label, over) for label, over in LEVERS if chat or label != "transcript"]
    out += [Config(f"{default} {label}", default, over) for label, over in levers]
    return out


def reusable(config: Config, suite_revision: int, commit: str) -> Report | None:
    if os.environ.get("REUSE", "") in ("", "0") or not config.file.exists() or commit.endswith("+dirty"):
        return None
    report = Report.load(config.file)
    same = report.revision == suite_revision and report.commit == commit
    return report if same and report.label == f"{config.label}{' quick' if QUICK else ''}" else None


def run(config: Config) -> Report | None:
    suite = load_suite("core")
    goals = suite.select(ci_only=QUICK)
    path = model_file(config.model)
    if path is None:
        print(f"skipped {config.label}: model {config.model} is not installed", file=sys.stderr)
        return None
    cached = reusable(config, suite.revision, git_commit())
    if cached is not None:
        print(f"reused {config.file}", file=sys.stderr)
        return cached
    overrides = {k: dict(v) for k, v in config.overrides.items()}
    overrides.setdefault("model", {})["path"] = str(path)
    options = RunOptions(overrides=overrides, label=f"{config.label}{' quick' if QUICK else ''}")
    report = run_suite(suite, goals, options)
    report.save(config.file)
    return report


def tier_rate(report: Report, tiers: tuple[str, ...]) -> tuple[int, int]:
    runs = [r for r in report.runs if r.tier in tiers]
    return sum(r.success for r in runs), len(runs)


def saved(files: list[str]) -> dict[str, Report]:
    """Reports written earlier, by label (the default model's report must be labelled with its name)."""
    reports = {(r := Report.load(Path(f))).label: r for f in files}
    if DEFAULT_MODEL_NAME not in reports:
        raise SystemExit(f"FROM: no report labelled {DEFAULT_MODEL_NAME} (the default model, every lever on)")
    return reports


def main() -> None:
    saved_files = [x.strip() for x in os.environ.get("FROM", "").split(",") if x.strip()]
    if saved_files:
        reports = saved(saved_files)
        show(reports)
        checks = judge(reports)
        print_checks(checks)
        print(f"wrote {write_result('eval', checks)}")
        return
    only = {x.strip() for x in os.environ.get("ONLY", "").split(",") if x.strip()}
    reports = {}
    for config in configs():
        if only and config.label not in only:
            continue
        report = run(config)
        if report is not None:
            reports[config.label] = report
    if not reports:
        raise SystemExit("nothing ran")
    show(reports)
    if only:
        print("ONLY was set: no checks written (REUSE=1 without ONLY assembles the whole run)")
        return
    checks = judge(reports)
    print_checks(checks)
    print(f"wrote {write_result('eval', checks)}")


def show(reports: dict[str, Report]) -> None:
    first = next(iter(reports.values()))
    tiers = first.tiers()
    rows = []
    for label, r in reports.items():
        rows.append(
            [label, r.prompt_format]
            + [f"{r.rate(t).value:.0%}" for t in tiers]
            + [str(r.rate()), f"{r.mean('steps'):.1f}", f"{r.mean('tokens'):.0f}", f"{r.mean('wall_s'):.1f}"]
            + [str(r.false_finishes())]
        )
    headers = [
        "configuration",
        "prompt",
        *tiers,
        "all (95% CI)",
        "steps",
        "tokens",
        "s/goal",
        "finished+wrong",
    ]
    print_table(f"eval: suite core, {len(first.runs)} runs per configuration", headers, rows)
    base = reports.get(DEFAULT_MODEL_NAME)
    if base is None:
        return
    lever_rows = []
    for label, r in reports.items():
        if not label.startswith(f"{DEFAULT_MODEL_NAME} "):
            continue
        c = compare(r, base)  # B = every lever on
        diff = base.rate().value - r.rate().value
        lever_rows.append(
            [
                label.removeprefix(f"{DEFAULT_MODEL_NAME} "),
                str(r.rate()),
                f"{diff * 100:+.0f} pp",
                f"+{c.test.gained} -{c.test.lost}",
                f"{c.test.p_value:.3g}",
            ]
        )
    print_table(
        f"levers on {DEFAULT_MODEL_NAME}: that lever off vs all on ({base.rate()})",
        ["off", "success", "all on minus off", "runs gained/lost by on", "p (McNemar)"],
        lever_rows,
    )


def judge(reports: dict[str, Report]) -> list[Check]:
    base = reports[DEFAULT_MODEL_NAME]
    ok, n = tier_rate(base, ("one_tool", "two_tools"))
    simple = ok / n if n else 0.0
    overall = base.rate().value
    miscounted = sum(
        1
        for r in reports.values()
        for run in r.runs
        if run.success and not all(v.passed for v in run.verdicts)
    )
    checks = [
        Check("default_model_one_and_two_tool_success", simple, "ratio", ">= 0.8", simple >= 0.8),
        Check("default_model_overall_success", overall, "ratio", ">= 0.5", overall >= 0.5),
        Check("successes_whose_checks_failed", miscounted, "runs", "== 0", miscounted == 0),
        Check("default_model_finished_but_wrong", base.false_finishes(), "runs", "info", True),
    ]
    for label, r in reports.items():
        if label.startswith(f"{DEFAULT_MODEL_NAME} "):
            lever = label.removeprefix(f"{DEFAULT_MODEL_NAME} ").replace(" ", "_")
            diff = overall - r.rate().value
            checks.append(Check(f"lever_{lever}_off_costs", diff, "ratio", "info (all on minus off)", True))
        elif label != DEFAULT_MODEL_NAME:
            checks.append(Check(f"model_{label}_overall_success", r.rate().value, "ratio", "info", True))
    return checks


if __name__ == "__main__":
    main()
