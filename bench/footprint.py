"""bench/footprint: the edge daemon's resident memory idle, with one agent and 30 s after it, split by
part (``edgehub.edge.footprint``: model file pages, model buffers, embeddings, Python), beside a plain
llama-cpp-python process holding the same model with the same settings; and ``edgehub --help``'s
start-up time.

  daemon  ``edgehub edge run`` with the default config (the real default model, L3 on, bwrap sandbox)
          in a process of its own; its model worker too when ``[snapshot] enabled`` (off by default).
          idle: 5 s after it is up; agent: the peak while ``edgehub agent run`` runs a real goal;
          after: 30 s after that agent ended.
  peer    ``Llama(...)`` with the daemon's model settings, after one short completion.
Targets (issue 19): the daemon without the model's own pages and buffers <= 120 MiB idle; 30 s after
the last agent ends, RSS back within 10 % of idle; ``edgehub --help`` < 0.5 s (median wall time).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import QUICK, Check, print_checks, print_table, write_result

from edgehub.edge.footprint import Footprint, measure, measure_daemon, total
from edgehub.llm import default_model_path

MiB = 1 << 20
EDGEHUB = str(Path(sys.executable).with_name("edgehub"))
GOAL = "Count the lines of the file /etc/os-release and report the number."
STEPS = 3 if QUICK else 6
HELP_RUNS = 3 if QUICK else 10
AFTER_S = 30.0
PEER = """
import os, sys, threading
from llama_cpp import Llama
held = []
def load():  # in a thread of its own, as the daemon does (asyncio.to_thread): the same malloc arenas
    held.append(Llama(model_path=sys.argv[1], n_ctx=2048, n_batch=64, n_threads=len(os.sched_getaffinity(0)),
                      logits_all=False, verbose=False))
    held[0]("The capital of France is", max_tokens=8, temperature=0.0)
thread = threading.Thread(target=load)
thread.start()
thread.join()
print("ready", flush=True)
sys.stdin.read()
"""


def start_daemon(folder: Path) -> tuple[subprocess.Popen[bytes], Path]:
    config = folder / "edge.toml"
    config.write_text(f'[device]\nid = "bench"\ndata_dir = "{folder / "data"}"\n')
    log = folder / "edge.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [EDGEHUB, "edge", "run", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 120
    while b"running on" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the daemon did not start:\n{log.read_text()}")
        time.sleep(0.2)
    return proc, config


def daemon_total(pid: int) -> tuple[Footprint, list[Footprint]]:
    parts = measure_daemon(pid)
    return total(parts), parts


def run_agent(pid: int, config: Path) -> tuple[Footprint, float, str]:
    """Run one agent through the daemon; the peak total footprint while it ran, its duration, status."""
    started = time.monotonic()
    agent = subprocess.Popen(
        [
            EDGEHUB,
            "agent",
            "run",
            "--goal",
            GOAL,
            "--max-steps",
            str(STEPS),
            "--config",
            str(config),
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    peak, _ = daemon_total(pid)
    while agent.poll() is None:
        now, _ = daemon_total(pid)
        peak = max(peak, now, key=lambda f: f.rss)
        time.sleep(0.25)
    out = agent.communicate()[0]
    status = _status(out) or f"exit {agent.returncode}"
    print(f"agent: {status} in {time.monotonic() - started:.1f} s")
    return peak, time.monotonic() - started, status


def _status(out: str) -> str:
    """The agent's final status from ``agent run --json``'s last line ("" when it printed none)."""
    for line in reversed(out.strip().splitlines()):
        with contextlib.suppress(ValueError, KeyError, TypeError):
            return str(json.loads(line)["agent"]["status"]).removeprefix("AGENT_STATUS_").lower()
    return ""


def peer() -> Footprint:
    proc = subprocess.Popen(
        [sys.executable, "-c", PEER, str(default_model_path())],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit("the plain llama-cpp-python process did not start")
        return measure(proc.pid, "peer")
    finally:
        proc.kill()
        proc.wait()


def help_times() -> list[float]:
    times = []
    for _ in range(HELP_RUNS):
        started = time.perf_counter()
        subprocess.run([EDGEHUB, "--help"], check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return times


def row(name: str, f: Footprint) -> list[str]:
    cells = (f.rss, f.model_file, f.model_buffers, f.embeddings, f.python, f.without_model)
    return [name, *(f"{c / MiB:.0f}" for c in cells)]


def main() -> None:
    theirs = peer()
    with tempfile.TemporaryDirectory() as d:
        proc, config = start_daemon(Path(d))
        try:
            time.sleep(5)
            idle, idle_parts = daemon_total(proc.pid)
            peak, _, status = run_agent(proc.pid, config)
            time.sleep(AFTER_S)
            after, after_parts = daemon_total(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
            shutil.copy(Path(d) / "edge.log", Path(tempfile.gettempdir()) / "bench-footprint-edge.log")
    helps = help_times()
    rows = [row("peer", theirs)]
    rows += [row(f"idle: {p.role}", p) for p in idle_parts] if len(idle_parts) > 1 else []
    rows += [row("idle", idle), row("agent peak", peak), row(f"+{AFTER_S:.0f} s", after)]
    rows += [row(f"+{AFTER_S:.0f} s: {p.role}", p) for p in after_parts] if len(after_parts) > 1 else []
    print_table(
        f"resident MiB; peer: plain llama-cpp-python; daemon idle, peak with one agent ({status},"
        f" {STEPS}-step budget), {AFTER_S:.0f} s after it",
        ["", "RSS", "model file", "buffers", "embed", "python", "w/o model"],
        rows,
    )
    help_s = statistics.median(helps)
    print_table(
        f"`edgehub --help`, {HELP_RUNS} runs",
        ["median s", "min s", "max s", "load average (1 min)"],
        [[f"{help_s:.3f}", f"{min(helps):.3f}", f"{max(helps):.3f}", f"{os.getloadavg()[0]:.1f}"]],
    )
    own = idle.without_model / MiB
    back = after.rss / idle.rss
    checks = [
        Check("daemon_idle_rss_without_model_mib", own, "MiB", "<= 120", own <= 120),
        Check("daemon_rss_30s_after_agent_vs_idle", back, "x", "<= 1.10", back <= 1.10),
        Check("cli_help_s", help_s, "s", "< 0.5", help_s < 0.5),
    ]
    print_checks(checks)
    print(f"wrote {write_result('footprint', checks)}")


if __name__ == "__main__":
    main()
