"""bench/sandbox: what the safety layer costs per tool call.

- Sandbox set-up + teardown: the same command (``true`` through ``/bin/sh``) run by the bubblewrap
  sandbox with its per-call cgroups, beside running it directly (``HostRunner``); the overhead is the
  difference of the medians. Target: <= 20 ms p50.
- Policy decision: one ``PolicyAdmission.admit`` (hot-reload ``stat`` + rule matching against the
  built-in default policy) for a ``run_command`` call that passes four rules before it matches.
  Target: <= 0.1 ms per call.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import QUICK, Check, pct, print_checks, print_table, write_result

from edgehub.edge.agent.tools import ToolContext, ToolSpec
from edgehub.edge.safety import BwrapSandbox, HostRunner, PolicyAdmission, PolicyEngine
from edgehub.edge.safety.policy import default_policy_text
from edgehub.edge.store import SqliteStore
from edgehub.protocol.v1 import agent_pb2

CALLS = 30 if QUICK else 200
DECISIONS = 2_000 if QUICK else 20_000


async def _times(runner: object, ws: Path, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r = await runner.run("true", ws, timeout_s=10, env={})  # type: ignore[attr-defined]
        out.append((time.perf_counter() - t) * 1000)
        assert r.ok, r.output
    return out


async def sandbox_figures(ws: Path) -> tuple[list[float], list[float]]:
    sandbox, host = BwrapSandbox(), HostRunner()
    assert sandbox.cgroups is not None, sandbox.cgroup_problem
    await _times(sandbox, ws, 3)  # warm the page cache for bwrap and sh
    await _times(host, ws, 3)
    boxed, bare = [], []
    for _ in range(CALLS // 10):  # interleaved, so drift on a shared machine hits both sides
        boxed += await _times(sandbox, ws, 10)
        bare += await _times(host, ws, 10)
    return boxed, bare


async def policy_figure(tmp: Path) -> float:
    policy = tmp / "policy.toml"
    policy.write_text(default_policy_text())
    store = SqliteStore.open(tmp / "e.db", device_id="bench")
    admission = PolicyAdmission(PolicyEngine(policy), store)
    spec = ToolSpec("run_command", "", {"type": "object"}, idempotent=False)
    ctx = ToolContext("a", 0, "a/0", tmp, store)
    args = {"command": "ls -l data && wc -l notes.txt"}
    call = agent_pb2.ToolCall(tool="run_command", args_json=json.dumps(args))
    decision = await admission.admit(call, spec, args, ctx)
    assert (decision.effect, decision.rule) == ("allow", "sandboxed-commands"), decision
    t = time.perf_counter()
    for _ in range(DECISIONS):
        await admission.admit(call, spec, args, ctx)
    return (time.perf_counter() - t) * 1000 / DECISIONS


async def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ws = tmp / "ws"
        ws.mkdir()
        boxed, bare = await sandbox_figures(ws)
        per_decision = await policy_figure(tmp)
    overhead = pct(boxed, 50) - pct(bare, 50)
    print_table(
        f"one command per call, {len(boxed)} calls each (set-up + run + teardown)",
        ["side", "p50 ms", "p99 ms"],
        [
            ["bubblewrap sandbox + cgroups", f"{pct(boxed, 50):.1f}", f"{pct(boxed, 99):.1f}"],
            ["no sandbox (same command)", f"{pct(bare, 50):.1f}", f"{pct(bare, 99):.1f}"],
            ["policy decision (default policy)", f"{per_decision:.4f}", ""],
        ],
    )
    checks = [
        Check("sandbox_overhead_p50_ms", round(overhead, 2), "ms", "<= 20", overhead <= 20),
        Check("sandbox_call_p99_ms", round(pct(boxed, 99), 2), "ms", "info", True),
        Check("policy_decision_ms", round(per_decision, 5), "ms", "<= 0.1", per_decision <= 0.1),
    ]
    print_checks(checks)
    print(f"wrote {write_result('sandbox', checks)}")


if __name__ == "__main__":
    asyncio.run(main())
