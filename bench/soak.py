"""bench/soak: one edge daemon runs 50,000 steps with retention on, beside the same run with it off.

The edge is the real daemon (``EdgeDaemon``: real store, SQLite WAL with synchronous=FULL, real loop,
gateway, policy and tools, the real ``[retention]`` pruner) with a scripted brain (``edgehub.llm.fake``):
decoding is excluded by design, so the run is as many steps as a device makes in weeks. Agents of ten
steps each (nine ``write_file`` calls with a 200-character text, then ``finish``) are submitted as the
previous ones end, one stepping at a time. The hub side is a real nats-server with the hub's
``EventApplier`` (its per-device record in KV; acknowledgements after the record moves) applying into
the hub's real ``AgentRegistry``; every applied event is counted by id.

Retention on: the pruner every second, windows by count (``WINDOW`` rows of acknowledged outbox and of
ended agents' mind-log, ``WINDOW // 10`` ended agents and ``WINDOW`` intents), so the window passes
early in the run and what follows must stay flat.

- DB size (pages x page size: the database as its connection sees it, WAL included) at the
  checkpoint (10,000 steps) and at the end. Target: final <= 1.2 x checkpoint, retention on.
- Stored per step before retention: what the retention-off database grew by per step after the
  checkpoint (so the empty schema's ~400 KB of pages is not spread over the steps). Target <= 2 KB.
- Events lost and applied twice, from the hub's applied records, both runs. Target 0 and 0.

QUICK=1: 5,000 steps, checkpoint at 1,000 (windows scaled down with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import QUICK, Check, print_checks, print_table, write_result

from edgehub.edge.app import EdgeDaemon
from edgehub.edge.config import EdgeConfig
from edgehub.edge.store import SqliteStore
from edgehub.hub.fleet.agents import AgentRegistry
from edgehub.llm.fake import FakeBrain
from edgehub.protocol.v1 import agent_pb2, events_pb2
from edgehub.sync import EventApplier, NatsServer, ensure_topology

STEPS = 5_000 if QUICK else 50_000
CHECKPOINT = 1_000 if QUICK else 10_000
WINDOW = CHECKPOINT // 4
"""Rows retention keeps of each kind (ended agents: a tenth of it)."""
AGENT_STEPS = 10
TEXT = "The sensor log for line 3 reads nominal; pressure 4.2 bar, temperature 61 C, flow steady. " * 2
S = agent_pb2


def script() -> Callable[[str], str]:
    """Nine ``write_file`` calls, then ``finish``, for each agent in turn (one steps at a time)."""
    n = 0

    def next_action(_prompt: str) -> str:
        nonlocal n
        n += 1
        i = (n - 1) % AGENT_STEPS
        if i == AGENT_STEPS - 1:
            return json.dumps(
                {"thought": "All readings are saved.", "tool": "finish", "args": {"answer": "saved"}}
            )
        args = {"path": f"reading-{i}.txt", "content": TEXT}
        return json.dumps(
            {"thought": f"Save reading {i} of the sensor log.", "tool": "write_file", "args": args}
        )

    return next_action


class Applied:
    """The hub's applier into its agent registry, counting each applied event by id."""

    def __init__(self, registry: AgentRegistry) -> None:
        self.registry = registry
        self.seen: dict[str, int] = {}

    async def apply(self, ev: events_pb2.EdgeEvent) -> None:
        await self.apply_batch([ev])

    async def apply_batch(self, events: list[events_pb2.EdgeEvent]) -> None:
        await self.registry.apply_batch(events)
        for ev in events:
            self.seen[ev.event_id] = self.seen.get(ev.event_id, 0) + 1


@dataclass(frozen=True, slots=True)
class Run:
    steps: int
    seconds: float
    size_at_checkpoint: int
    steps_at_checkpoint: int
    size_final: int
    file_final: int
    wal_final: int
    lost: int
    duplicated: int
    pruned: int
    slowest_batch_ms: float
    agents_finished: int
    agents_other: int

    @property
    def per_step(self) -> float:
        """What each step after the checkpoint added (the empty schema's pages not counted)."""
        return (self.size_final - self.size_at_checkpoint) / (self.steps - self.steps_at_checkpoint)


def config(data: Path, url: str, retention: bool) -> EdgeConfig:
    return EdgeConfig.model_validate(
        {
            "device": {"id": "soak-dev", "data_dir": str(data), "apply_profile": False},
            "tools": {"load_entry_points": False},
            "hub": {"nats_url": url},
            "memory": {"episodic": False},
            "agent": {"max_concurrent": 1, "max_steps": AGENT_STEPS + 2, "plan": False},
            "safety": {"rate_per_minute": None},
            "retention": {
                "enabled": retention,
                "interval_s": 1.0,
                "outbox": {"max_rows": WINDOW},
                "mind_log": {"max_rows": WINDOW},
                "agents": {"max_rows": max(1, WINDOW // 10)},
                "intents": {"max_rows": WINDOW},
            },
        }
    )


def store_of(daemon: EdgeDaemon) -> SqliteStore:
    assert isinstance(daemon.store, SqliteStore)
    return daemon.store


def db_size(daemon: EdgeDaemon) -> int:
    stats = store_of(daemon).file_stats()
    return stats.pages * stats.page_size


async def one_run(tmp: Path, server: NatsServer, retention: bool) -> Run:
    hub = await nats.connect(server.url)
    await ensure_topology(hub.jetstream())
    applied = Applied(AgentRegistry(hub.jetstream()))
    stop_hub = asyncio.Event()
    applier = EventApplier(hub.jetstream(), applied.apply, apply_batch=applied.apply_batch)
    hub_task = asyncio.create_task(applier.run(stop_hub))
    brain = FakeBrain(script())
    cfg = config(tmp / ("on" if retention else "off"), server.url, retention)
    started = time.perf_counter()
    async with EdgeDaemon(cfg, brain=brain, poll_interval=0.02) as daemon:
        store = store_of(daemon)
        runner = asyncio.create_task(daemon.run())
        at_checkpoint = steps_then = 0
        submitted = 0
        while (steps := _seq(daemon)) < STEPS:
            pending = len(store.list_agents((S.AGENT_STATUS_PENDING,)))
            while pending < 4 and submitted * AGENT_STEPS < STEPS:
                daemon.submit(f"Save the sensor readings, batch {submitted}.")
                submitted, pending = submitted + 1, pending + 1
            if not at_checkpoint and steps >= CHECKPOINT:
                at_checkpoint, steps_then = db_size(daemon), steps
            brain.prompts.clear()  # the scripted brain records prompts: not what is measured
            await asyncio.sleep(0.05)
        daemon.request_stop()
        await runner
        if retention:  # the last window: one more pass, as the running daemon makes every interval_s
            await daemon.pruner.prune_once()
        seq = _seq(daemon)
        finished = len(store.list_agents((S.AGENT_STATUS_FINISHED,)))
        others = len(store.list_agents()) - finished
        deadline = time.perf_counter() + 120
        while len(applied.seen) < seq and time.perf_counter() < deadline:  # noqa: ASYNC110 - polls the hub
            await asyncio.sleep(0.1)
        store.wal_checkpoint()
        stats = store.file_stats()
        run = Run(
            steps=seq,
            seconds=time.perf_counter() - started,
            size_at_checkpoint=at_checkpoint,
            steps_at_checkpoint=steps_then,
            size_final=db_size(daemon),
            file_final=stats.db_bytes,
            wal_final=stats.wal_bytes,
            lost=seq - len(applied.seen),
            duplicated=sum(c - 1 for c in applied.seen.values()),
            pruned=sum(daemon.pruner.pruned.values()),
            slowest_batch_ms=daemon.pruner.slowest_batch_s * 1000,
            agents_finished=finished,
            agents_other=others,
        )
    stop_hub.set()
    await hub_task
    await hub.close()
    return run


def _seq(daemon: EdgeDaemon) -> int:
    """Events committed so far: the outbox's sequence is gap-free (one per step here)."""
    return int(store_of(daemon)._scalar("SELECT COALESCE(MAX(seq), 0) FROM outbox"))


async def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        server = await NatsServer.start(tmp / "nats")
        try:
            on = await one_run(tmp, server, retention=True)
            with contextlib.suppress(Exception):
                await server.stop()
            server = await NatsServer.start(tmp / "nats2")
            off = await one_run(tmp, server, retention=False)
        finally:
            await server.stop()
    kb = 1024
    print_table(
        f"one edge, {STEPS:,} steps (scripted brain, real store, NATS and hub applier); retention windows"
        f" {WINDOW:,} rows",
        ["figure", "retention on", "retention off"],
        [
            ["steps committed", f"{on.steps:,}", f"{off.steps:,}"],
            ["wall time s / steps per s", f"{on.seconds:.0f} / {on.steps / on.seconds:.0f}",
             f"{off.seconds:.0f} / {off.steps / off.seconds:.0f}"],
            [f"DB size at {CHECKPOINT:,} steps (KB)", f"{on.size_at_checkpoint / kb:,.0f}",
             f"{off.size_at_checkpoint / kb:,.0f}"],
            ["DB size at the end (KB)", f"{on.size_final / kb:,.0f}", f"{off.size_final / kb:,.0f}"],
            ["final / at checkpoint", f"{on.size_final / on.size_at_checkpoint:.2f}",
             f"{off.size_final / off.size_at_checkpoint:.2f}"],
            ["stored per step, whole run (bytes)", f"{on.size_final / on.steps:,.0f}",
             f"{off.size_final / off.steps:,.0f}"],
            [f"stored per step after the first {CHECKPOINT:,} (bytes)", f"{on.per_step:,.0f}",
             f"{off.per_step:,.0f}"],
            ["files at the end: db / wal (KB)", f"{on.file_final / kb:,.0f} / {on.wal_final / kb:,.0f}",
             f"{off.file_final / kb:,.0f} / {off.wal_final / kb:,.0f}"],
            ["rows pruned", f"{on.pruned:,}", f"{off.pruned:,}"],
            ["longest a pruning batch held the loop (ms)", f"{on.slowest_batch_ms:.1f}", "-"],
            ["agents finished / other", f"{on.agents_finished:,} / {on.agents_other:,}",
             f"{off.agents_finished:,} / {off.agents_other:,}"],
            ["events lost / applied twice", f"{on.lost} / {on.duplicated}", f"{off.lost} / {off.duplicated}"],
        ],
    )  # fmt: skip
    growth = on.size_final / on.size_at_checkpoint
    per_step = off.per_step
    lost, dups = on.lost + off.lost, on.duplicated + off.duplicated
    checks = [
        Check("retention_final_over_checkpoint_size", round(growth, 3), "x", "<= 1.2", growth <= 1.2),
        Check(
            "stored_bytes_per_step_before_retention", round(per_step), "bytes", "<= 2048", per_step <= 2048
        ),
        Check("events_lost", lost, "events", "== 0", lost == 0),
        Check("events_applied_twice", dups, "events", "== 0", dups == 0),
        Check("steps_with_retention", on.steps, "steps", f">= {STEPS}", on.steps >= STEPS),
    ]
    print_checks(checks)
    print(f"wrote {write_result('soak', checks)}")


if __name__ == "__main__":
    asyncio.run(main())
