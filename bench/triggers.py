"""bench/triggers: event-to-agent-start latency of an MQTT trigger, beside the same goal submitted
directly, in one run (issue 22).

One edge daemon (in this process, the real store, scheduler and trigger runner; ``FakeBrain`` answers
``finish`` at once, since the model's speed is not what is measured) with an ``mqtt`` trigger on a
real Mosquitto broker (the Debian package, started here on a free loopback port). Each sample is one
goal carrying its number:

- trigger: the bench publishes ``{"n": N}`` (QoS 1) on the trigger's topic; the time runs from just
  before the publish to the agent's first step, i.e. the daemon's first call of the model for that
  agent (``FakeBrain`` notes when it sees the goal's number in a prompt). It covers the broker, the
  subscription, the condition, the template, the gate, the record and agent in one transaction, and
  the scheduler's start.
- peer: ``EdgeDaemon.submit`` with the same goal text (what ``edgehub agent run`` and the hub's
  StartAgent do: a PENDING agent in the store that the scheduler's next tick starts, every
  ``poll_interval`` = 0.2 s by default); from the call to the first step likewise.

Samples alternate between the two, one agent at a time (each waits until the previous one ended, so
no sample queues behind ``max_concurrent``). Targets: trigger p99 <= 250 ms (an alarm's agent starts
well within a second on a 2-core machine), and trigger p99 <= the submit path's p99 in the same run (a
trigger adds no start-up cost to the path a submitted goal takes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import tempfile
import time
from pathlib import Path

import aiomqtt
from common import QUICK, Check, median, pct, print_checks, print_table, write_result

from edgehub.edge.app import EdgeDaemon
from edgehub.edge.config import EdgeConfig
from edgehub.llm.fake import FakeBrain
from edgehub.protocol.v1 import agent_pb2
from edgehub.sync import free_port

SAMPLES = 10 if QUICK else 60
"""Per path."""
TRIGGER_P99_MS = 250.0
GOAL = re.compile(r"Check alarm #(\d+) ")


class FirstSteps:
    """A FakeBrain script that notes when each goal number first reaches the model."""

    def __init__(self) -> None:
        self.seen: dict[int, float] = {}

    def __call__(self, prompt: str) -> str:
        now = time.perf_counter()
        for n in GOAL.findall(prompt):
            self.seen.setdefault(int(n), now)
        return json.dumps({"thought": "done", "tool": "finish", "args": {"answer": "ok"}})


async def wait_for(check: object, within: float = 10.0) -> None:
    deadline = time.perf_counter() + within
    while not check():  # type: ignore[operator]
        if time.perf_counter() > deadline:
            raise TimeoutError("the agent did not start")
        await asyncio.sleep(0.001)


async def measure(folder: Path, port: int) -> tuple[list[float], list[float]]:
    steps = FirstSteps()
    trigger = {
        "id": "alarm",
        "kind": "mqtt",
        "broker": f"mqtt://127.0.0.1:{port}",
        "topic": "bench/alarm",
        "goal": "Check alarm #${payload.n} now.",
        "dedupe_key": "${payload.n}",
        "dedupe_s": 60,
    }
    cfg = EdgeConfig.model_validate(
        {
            "device": {"id": "bench", "data_dir": str(folder / "edge")},
            "tools": {"load_entry_points": False},
            "memory": {"episodic": False, "replicate": False},
            "triggers": [trigger],
        }
    )
    via_trigger: list[float] = []
    via_submit: list[float] = []
    async with EdgeDaemon(cfg, brain=FakeBrain(steps)) as daemon:
        task = asyncio.create_task(daemon.run())
        runner = daemon.parts.triggers
        assert runner is not None
        await wait_for(lambda: getattr(runner.sources.get("alarm"), "connected", False))
        async with aiomqtt.Client("127.0.0.1", port) as pub:
            for i in range(2 * SAMPLES + 2):  # the first two warm up
                n = i + 1
                start = time.perf_counter()
                if i % 2 == 0:
                    await pub.publish("bench/alarm", json.dumps({"n": n}), qos=1)
                else:
                    daemon.submit(f"Check alarm #{n} now.")
                await wait_for(lambda n=n: n in steps.seen)
                if i >= 2:
                    (via_trigger if i % 2 == 0 else via_submit).append((steps.seen[n] - start) * 1000)
                await wait_for(lambda: not daemon.parts.scheduler.running)
        daemon.request_stop()
        await task
        ended = daemon.store.list_agents((agent_pb2.AGENT_STATUS_FINISHED,))
        assert len(ended) == 2 * SAMPLES + 2, len(ended)
    return via_trigger, via_submit


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder, port = Path(tmp), free_port()
        conf = folder / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        broker = subprocess.Popen(
            ["/usr/sbin/mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            time.sleep(0.3)
            trig, sub = asyncio.run(measure(folder, port))
        finally:
            broker.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                broker.wait(5)
    rows = [
        [
            "MQTT trigger: publish -> first step",
            f"{median(trig):.1f}",
            f"{pct(trig, 99):.1f}",
            str(len(trig)),
        ],
        [
            "submit (agent run): call -> first step",
            f"{median(sub):.1f}",
            f"{pct(sub, 99):.1f}",
            str(len(sub)),
        ],
    ]
    print_table("event-to-agent-start latency (ms)", ["path", "p50", "p99", "samples"], rows)
    checks = [
        Check("trigger p50", median(trig), "ms", "(reported)", True),
        Check("trigger p99", pct(trig, 99), "ms", f"<= {TRIGGER_P99_MS:g}", pct(trig, 99) <= TRIGGER_P99_MS),
        Check("submit p50", median(sub), "ms", "(peer)", True),
        Check("submit p99", pct(sub, 99), "ms", "(peer)", True),
        Check(
            "trigger p99 / submit p99",
            pct(trig, 99) / pct(sub, 99),
            "x",
            "<= 1",
            pct(trig, 99) <= pct(sub, 99),
        ),
    ]
    print_checks(checks)
    print(f"wrote {write_result('triggers', checks)}")


if __name__ == "__main__":
    main()
