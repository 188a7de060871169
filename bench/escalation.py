"""bench/escalation: issue 21's tiered intelligence, measured.

(a) confidence: on labelled single-step probes (a goal whose right first tool is plain), each packaged
    model writes a grammar-constrained action; the table gives the median confidence of its right and
    of its wrong choices and how often a right choice is more confident than a wrong one (the ranking
    probability, 0.5 = no signal), and what measuring costs per completion (tracking on vs off).
(b) the hub: its real model (``[planner]``'s default) behind a real nats-server and the real
    ``EscalationService``; 100 simulated devices each ask one step at once (distinct prompts), then the
    same 100 again (served from the hub's cache). Throughput, latency p50/p99 as a device sees it, the
    spread of the devices' waits (fairness), and the cache's hit rate.
(c) the added latency of one escalated step: one device asking steps one after another (the device's
    own model has already run; this is what the round trip adds), p50/p99.

Not measured here: the evaluation suite's success rate with and without escalation (it needs the eval
runner to wait for the hub link before its first step; see docs/models.md).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nats
from common import QUICK, Check, median, pct, print_checks, print_table, write_result
from prometheus_client import CollectorRegistry

from edgehub.hub.config import EscalationConfig, PlannerConfig
from edgehub.hub.escalation import EscalationService
from edgehub.hub.hubmodel import HubModel
from edgehub.llm import LlamaSettings, ModelFileError, packaged_model_path
from edgehub.llm import confidence as conf
from edgehub.llm.llama import LlamaBrain
from edgehub.llm.settings import PACKAGED_MODELS
from edgehub.protocol import subjects
from edgehub.protocol.v1 import models_pb2
from edgehub.sync import NatsServer
from edgehub.sync.escalation import ESCALATION_VERSION
from edgehub.sync.server import free_port

M = models_pb2
TOOLS = ("read_file", "write_file", "run_command", "finish")
PROBES = [
    ("show what notes.txt says", "read_file"),
    ("print the contents of config.yaml", "read_file"),
    ("read the file todo.md and summarise it", "read_file"),
    ("create a file hello.txt containing hello", "write_file"),
    ("save the text 'done' into status.txt", "write_file"),
    ("write a poem into poem.txt", "write_file"),
    ("run the shell command `uname -a`", "run_command"),
    ("list the files in /tmp with ls", "run_command"),
    ("execute `df -h` to see free disk space", "run_command"),
    ("the answer is already known: 42. Give it.", "finish"),
    ("say hello to the user; nothing else is needed", "finish"),
    ("you are done; report that the task is complete", "finish"),
]
SCHEMA = {
    "anyOf": [
        {
            "type": "object",
            "properties": {"thought": {"type": "string", "maxLength": 40}, "tool": {"const": t}},
            "required": ["thought", "tool"],
            "additionalProperties": False,
        }
        for t in TOOLS
    ]
}
DEVICES = 100
ACTION_TOKENS = 64
SEQUENTIAL = 10 if QUICK else 30


def prompt(goal: str) -> str:
    return (
        "An agent answers with one JSON action choosing a tool: read_file (read a file), write_file "
        "(write a file), run_command (run a shell command), finish (give the final answer).\n"
        f"Goal: {goal}\nAction: "
    )


def probe(name: str) -> tuple[list[str], dict[str, float]] | None:
    try:
        path = packaged_model_path(name)
    except ModelFileError:
        return None
    brain = LlamaBrain.open(LlamaSettings(path=path, n_ctx=1024, n_threads=2, n_batch=64, grammar_bounds=200))
    right, wrong, on_ms, off_ms = [], [], [], []
    try:
        for goal, expected in PROBES:
            text = prompt(goal)
            started = time.perf_counter()
            out = brain.complete(text, json_schema=SCHEMA, max_tokens=ACTION_TOKENS)
            on_ms.append((time.perf_counter() - started) * 1000 / max(out.completion_tokens, 1))
            try:
                chosen = json.loads(out.text)["tool"]
            except ValueError:  # cut at max_tokens inside its thought: it chose nothing
                chosen = None
            (right if chosen == expected else wrong).append(out.confidence or 0.0)
            brain.complete("x", max_tokens=1)  # no prefix reuse between the two timings
            original = conf.ToolConfidence.in_value
            conf.ToolConfidence.in_value = lambda self: False  # type: ignore[method-assign]
            try:
                started = time.perf_counter()
                again = brain.complete(text, json_schema=SCHEMA, max_tokens=ACTION_TOKENS)
                off_ms.append((time.perf_counter() - started) * 1000 / max(again.completion_tokens, 1))
            finally:
                conf.ToolConfidence.in_value = original  # type: ignore[method-assign]
    finally:
        brain.close()
    pairs = [(r, w) for r in right for w in wrong]
    ranking = (
        sum(1.0 if r > w else 0.5 if r == w else 0.0 for r, w in pairs) / len(pairs)
        if pairs
        else float("nan")
    )
    figures = {
        "right": len(right), "wrong": len(wrong),
        "right_median": median(right) if right else float("nan"),
        "wrong_median": median(wrong) if wrong else float("nan"),
        "ranking": ranking,
        "cost_ms_per_token": median(on_ms) - median(off_ms),
    }  # fmt: skip
    row = [
        name, f"{len(right)}/{len(PROBES)}", f"{figures['right_median']:.4f}",
        f"{figures['wrong_median']:.4f}", f"{ranking:.2f}", f"{figures['cost_ms_per_token']:+.2f}",
    ]  # fmt: skip
    return row, figures


def is_action(text: str) -> bool:
    try:
        return json.loads(text)["tool"] in TOOLS
    except (ValueError, KeyError, TypeError):
        return False


async def hub_round(folder: Path) -> dict[str, float]:
    server = await NatsServer.start(folder / "nats", port=free_port())
    nc = await nats.connect(server.url)
    stop = asyncio.Event()
    model = HubModel(PlannerConfig(n_ctx=2048, n_threads=2))
    cfg = EscalationConfig(queue_total=DEVICES * 2, default_deadline_ms=600_000)
    service = EscalationService(nc, model, cfg, metrics=CollectorRegistry())
    serving = asyncio.create_task(service.run(stop))
    await nc.flush()

    async def ask(device: str, goal: str) -> tuple[float, models_pb2.EscalateReply]:
        req = M.EscalateRequest(
            schema_version=ESCALATION_VERSION, agent_id="a", prompt=prompt(goal),
            json_schema=json.dumps(SCHEMA), max_tokens=ACTION_TOKENS, deadline_ms=600_000,
        )  # fmt: skip
        started = time.perf_counter()
        msg = await nc.request(subjects.escalation(device), req.SerializeToString(), timeout=900)
        return time.perf_counter() - started, M.EscalateReply.FromString(msg.data)

    try:
        await ask("warm-up", "warm up the model")  # the model loads at the first request
        goals = [(f"dev-{i}", f"{PROBES[i % len(PROBES)][0]} (device {i})") for i in range(DEVICES)]
        started = time.perf_counter()
        first = await asyncio.gather(*(ask(d, g) for d, g in goals))
        wall = time.perf_counter() - started
        again = await asyncio.gather(*(ask(d, g) for d, g in goals))
        single = [
            (await ask("dev-seq", f"{PROBES[i % len(PROBES)][0]} (step {i})"))[0] for i in range(SEQUENTIAL)
        ]
    finally:
        stop.set()
        await serving
        model.close()
        await nc.close()
        await server.stop()
    waits = [t for t, _ in first]
    return {
        "answered": sum(1 for _, r in first if not r.error),
        "actions": sum(1 for _, r in first if is_action(r.text)),
        "throughput": DEVICES / wall,
        "p50": pct(waits, 50), "p99": pct(waits, 99),
        "cached": sum(1 for _, r in again if r.cached) / DEVICES,
        "cached_p50": pct([t for t, _ in again], 50),
        "hit_rate": service.cache.hit_rate,
        "step_p50": pct(single, 50), "step_p99": pct(single, 99),
    }  # fmt: skip


def main() -> None:
    rows, checks = [], []
    for name in PACKAGED_MODELS:
        done = probe(name)
        if done is None:
            print(f"skipped {name}: not installed", file=sys.stderr)
            continue
        row, f = done
        rows.append(row)
        checks.append(
            Check(f"confidence_ranking_{name}", f["ranking"], "probability", "> 0.5", f["ranking"] > 0.5)
        )
        checks.append(Check(f"confidence_cost_{name}", f["cost_ms_per_token"], "ms/token", "info", True))
    print_table("confidence: right vs wrong first tool", ["model", "right", "median conf right",
                "median conf wrong", "P(right > wrong)", "cost ms/token"], rows)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        h = asyncio.run(hub_round(Path(tmp)))
    print_table(
        f"hub: {DEVICES} devices at once, the hub's model ({PlannerConfig().model_path or 'default'})",
        ["answered", "valid actions", "req/s", "p50 s", "p99 s", "again: cached", "cached p50 s", "hit rate",
         "one step p50 s", "p99 s"],
        [[f"{h['answered']:.0f}", f"{h['actions']:.0f}", f"{h['throughput']:.2f}", f"{h['p50']:.2f}",
          f"{h['p99']:.2f}", f"{h['cached']:.0%}", f"{h['cached_p50']:.3f}", f"{h['hit_rate']:.0%}",
          f"{h['step_p50']:.2f}", f"{h['step_p99']:.2f}"]],
    )  # fmt: skip
    checks += [
        Check("hub_answered_of_100_at_once", h["answered"], "requests", "== 100", h["answered"] == DEVICES),
        Check("hub_answers_that_are_valid_actions", h["actions"], "requests", "info", True),
        Check("hub_throughput", h["throughput"], "req/s", "info", True),
        Check("hub_latency_p99_100_devices", h["p99"], "s", "info", True),
        Check("repeat_round_served_from_cache", h["cached"], "ratio", "== 1", h["cached"] == 1.0),
        Check("hub_cache_hit_rate", h["hit_rate"], "ratio", "info", True),
        Check("added_latency_per_escalated_step_p50", h["step_p50"], "s", "info", True),
        Check("added_latency_per_escalated_step_p99", h["step_p99"], "s", "info", True),
    ]
    print_checks(checks)
    print(f"wrote {write_result('escalation', checks)}")


if __name__ == "__main__":
    main()
