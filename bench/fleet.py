"""bench/fleet: one hub process with 1,000 simulated devices heartbeating and receiving commands (issue 4).

The hub is the real daemon, ``edgehub hub run`` as a subprocess (embedded nats-server with
``sync_interval: always``, TLS gRPC API, Prometheus metrics). The devices are simulated without a
model or a store; each does what ``HubLink`` does:

- puts its twin (a ``DeviceTwin`` as ``TwinReporter.twin()`` builds it, ~300 bytes) into
  ``edgehub-devices`` every HEARTBEAT_S, the devices' phases spread evenly over one interval;
- runs its own ``edgehub.sync.commands.CommandConsumer`` (a durable pull consumer per device, the real
  one), whose handler records when the command arrived; the ack follows right after it.

Each device has its own NATS connection with device credentials minted from the hub's trust folder
as enrollment mints them (its own user key; a JWT allowing only its own subjects; its own inbox
prefix), so the server enforces per-device permissions as in production (devices cannot share a
connection under them). The devices run in WORKERS processes: in one, its event loop sat at 90 % of a
core and heartbeats queued there for half a second before reaching the network. The bench, the hub
and its nats-server share the machine (2 cores here), so every process's CPU is reported, including
processes that are not the bench's.

Commands go through the hub's management API (TLS, the admin's bearer token): ``StopAgent`` (gRPC)
with the device given, so the hub checks the token, builds the command and publishes it to that
device's durable stream (it skips the agent-registry lookup it does when only an agent id is given),
COMMANDS_PER_DEVICE_S per device per second, round robin.

Figures, over WINDOW_S after all devices are online and a WARMUP_S warm-up:

- heartbeat -> registry lag p50/p99: the hub's own histogram ``edgehub_hub_heartbeat_lag_seconds``
  (``DeviceWatcher``: hub receive time minus the twin's ``sent_at``), the difference of two scrapes,
  quantiles interpolated inside buckets as Prometheus' ``histogram_quantile`` does (buckets 1, 2, 5,
  10, 20, 50, 100, 200, 500 ms, ...); beside it the hub's share (``..._heartbeat_queue_seconds``:
  from NATS storing the twin) and the put's ack time seen by the device. Target p99 <= 1 s: a fifth
  of the heartbeat interval, so the hub's view trails the fleet by well under one beat and a device
  only turns offline (3 beats missed) when its beats stop, not because the hub is behind; 1 s is
  also the resolution an operator reads "last seen" at.
- command latency: from the API call to the device's handler (the ack follows), CLOCK_MONOTONIC
  across processes.
- hub CPU: utime + stime of the hub process from ``/proc/<pid>/stat`` over the window (its embedded
  nats-server is a separate process, reported apart). Target < 100 % of one core: one hub keeps up.
- devices online as the hub reports them: its gauge ``edgehub_hub_devices_online`` and ``ListDevices``
  through the API, each == the simulated count.
- commands lost (sent in the window and not handled 40 s after it, beyond the consumers' 30 s ack
  wait, after which the server redelivers what a consumer was sent but did not acknowledge): == 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event as ProcessEvent
from pathlib import Path
from typing import Any

import grpc
import nats
import nkeys
from nats.aio.client import Client, RawCredentials
from nats.js.kv import KeyValue
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import QUICK, Check, pct, print_checks, print_table, write_result

from edgehub.protocol.ids import kv_key
from edgehub.protocol.v1 import commands_pb2, hub_pb2, hub_pb2_grpc
from edgehub.sync import free_port
from edgehub.sync.auth import Trust, creds_text, inbox_prefix, keypair, new_seed, public_key
from edgehub.sync.commands import CommandConsumer
from edgehub.sync.streams import DEVICES

H = hub_pb2
N_DEVICES = 200 if QUICK else 1_000
WORKERS = 2
WINDOW_S = 15.0 if QUICK else 30.0
WARMUP_S = 5.0 if QUICK else 10.0
HEARTBEAT_S = 5.0
"""The edge's default ``[hub] heartbeat_s``: 200 twin puts/s for 1,000 devices (see the docstring for 1 s)."""
RAMP_BATCH, RAMP_S = 50, 0.5
"""The fleet comes up 50 devices every 0.5 s (1,000 at once time out creating their consumers)."""
COMMANDS_PER_DEVICE_S = 0.1
"""Each device gets a command every 10 s: 100 commands/s for 1,000 devices."""
LAG_TARGET_S = 1.0
COMMAND_GRACE_S = 40.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]
"""A /metrics scrape: {sample name: {sorted labels: value}}."""


def device_id(i: int) -> str:
    return f"dev-{i:04d}"


# ---- the simulated devices (worker processes) ----


@dataclass
class DeviceLog:
    """What one worker's devices did; times are ``time.monotonic()`` (CLOCK_MONOTONIC, one clock for
    every process of the machine)."""

    puts: list[tuple[float, float]] = field(default_factory=list)
    """(start, seconds to the server's ack) per heartbeat put."""
    put_failures: int = 0
    handled: dict[str, float] = field(default_factory=dict)
    """command id -> when the device's handler ran."""
    resubscribes: list[float] = field(default_factory=list)
    """When a command consumer logged "fetch failed ...; re-subscribing"."""


class Resubscribes(logging.Handler):
    """Records the command consumers' re-subscribes (and keeps them off the console). ``pull_forever``
    catches ``nats.errors.TimeoutError`` only; nats-py raises a plain ``asyncio.TimeoutError`` when a
    fetch's deadline is used up before its long poll goes out, which is then handled as a failure:
    re-subscribe (a consumer info request) and a ``retry_s`` (1 s) pause of that device's commands."""

    def __init__(self, log: DeviceLog) -> None:
        super().__init__(logging.DEBUG)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        if "re-subscribing" in record.getMessage():
            self.log.resubscribes.append(time.monotonic())


class Device:
    def __init__(self, nc: Client, kv: KeyValue, device_id: str, log: DeviceLog) -> None:
        self.id = device_id
        self.nc = nc
        self.kv = kv
        self.log = log
        self.commands = CommandConsumer(nc.jetstream(), device_id, self.on_command)

    @classmethod
    async def connect(cls, url: str, trust: Trust, device_id: str, log: DeviceLog) -> Device:
        """Its own connection, with device credentials as enrollment issues them."""
        seed = new_seed(nkeys.PREFIX_BYTE_USER)
        creds = creds_text(trust.device_jwt(device_id, public_key(keypair(seed))), seed)
        nc = await nats.connect(
            url,
            name=f"bench-{device_id}",
            user_credentials=RawCredentials(creds),
            inbox_prefix=inbox_prefix(device_id),
            max_reconnect_attempts=-1,
        )
        return cls(nc, await nc.jetstream().key_value(DEVICES.name), device_id, log)

    def state(self) -> dict[str, Any]:
        """The twin's fields (bench/dispatch adds what the planner reads)."""
        return {
            "device_id": self.id,
            "state": "running",
            "heartbeat_s": HEARTBEAT_S,
            "sent_at": time.time(),
            "version": "bench",
            "hardware": {"arch": "x86_64", "cpus": 4, "kernel": "6.1.0"},
            "load": 0.5,
            "outbox_depth": 0,
            "agents_running": [f"{self.id}-agent"],
        }

    def twin(self) -> bytes:
        return json.dumps(self.state()).encode()

    async def on_command(self, cmd: commands_pb2.Command) -> None:
        assert cmd.stop_agent.agent_id == f"{self.id}-agent", cmd
        self.log.handled.setdefault(cmd.command_id, time.monotonic())

    async def heartbeat(self, stop: asyncio.Event, phase: float) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time() + phase
        while not stop.is_set():
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += HEARTBEAT_S
            t = time.monotonic()
            try:
                await self.kv.put(kv_key(self.id), self.twin())
            except Exception:
                self.log.put_failures += 1
                continue
            self.log.puts.append((t, time.monotonic() - t))


async def simulate(
    worker: int,
    url: str,
    trust_dir: Path,
    done: ProcessEvent,
    device: type[Device] = Device,
    log: DeviceLog | None = None,
) -> DeviceLog:
    """Devices ``worker``, ``worker + WORKERS``, ... until ``done`` is set (bench/dispatch passes its
    own ``device`` class and ``log``)."""
    log = log or DeviceLog()
    commands_log = logging.getLogger("edgehub.sync.commands")
    commands_log.setLevel(logging.DEBUG)  # pull_forever logs a repeated error at DEBUG
    commands_log.addHandler(Resubscribes(log))
    commands_log.propagate = False
    trust = Trust.load_or_create(trust_dir)
    mine = list(range(worker, N_DEVICES, WORKERS))
    stop = asyncio.Event()
    devices: list[Device] = []
    tasks = []
    wave = max(1, RAMP_BATCH // WORKERS)
    for first in range(0, len(mine), wave):  # a fleet comes up over time, not in one instant
        batch = mine[first : first + wave]
        up = await asyncio.gather(*(device.connect(url, trust, device_id(i), log) for i in batch))
        for i, d in zip(batch, up, strict=True):
            tasks.append(asyncio.create_task(d.commands.run(stop)))
            tasks.append(asyncio.create_task(d.heartbeat(stop, HEARTBEAT_S * i / N_DEVICES)))
        devices += up
        await asyncio.sleep(RAMP_S)
    await asyncio.to_thread(done.wait)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    for d in devices:
        with contextlib.suppress(Exception):
            await d.nc.close()
    return log


def worker_main(worker: int, url: str, trust_dir: Path, done: ProcessEvent, out: Any) -> None:
    out.send(asyncio.run(simulate(worker, url, trust_dir, done)))


# ---- the hub, its metrics and its process ----


@dataclass
class Hub:
    proc: subprocess.Popen[bytes]
    nats: str
    api: str
    metrics_port: int
    log: Path
    trust: Path

    def api_credentials(self) -> grpc.ChannelCredentials:
        """TLS against the hub's CA, with the admin token the hub wrote at first start."""
        tls = grpc.ssl_channel_credentials((self.trust / "ca.pem").read_bytes())
        token = (self.trust / "admin.token").read_text().strip()
        return grpc.composite_channel_credentials(tls, grpc.access_token_call_credentials(token))

    def scrape(self) -> Samples:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        out: Samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
        return out


def start_hub(tmp: Path, python_args: Sequence[str] = ()) -> Hub:
    """The hub daemon in ``tmp``; ``python_args`` go before ``-m`` (bench/dispatch: ``-m cProfile -o F``)."""
    port, api, metrics = free_port(), f"127.0.0.1:{free_port()}", free_port()
    config = tmp / "hub.toml"
    config.write_text(
        f'[hub]\nid = "bench-hub"\n\n[nats]\nembedded_port = {port}\nembedded_store = "{tmp / "nats"}"\n\n'
        f'[metrics]\nport = {metrics}\n\n[api]\naddr = "{api}"\ndevice_addr = "127.0.0.1:0"\n\n'
        f'[auth]\ndir = "{tmp / "trust"}"\n\n[neo4j]\nenabled = false\n'  # no JVM beside what is measured
    )
    log = tmp / "hub.log"
    with log.open("wb") as f:
        cmd = [sys.executable, *python_args, "-m", "edgehub.cli", "hub", "run", "-c", str(config)]
        cmd += ["--log-level", "warning"]
        proc = subprocess.Popen(cmd, stderr=f, stdout=f)
    hub = Hub(proc, f"nats://127.0.0.1:{port}", api, metrics, log, tmp / "trust")
    deadline = time.monotonic() + 60
    while True:  # metrics start last: once they answer, the API and the trust folder are there
        with contextlib.suppress(OSError):
            hub.scrape()
            return hub
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the hub did not start: {log.read_text()[-2000:]}")
        time.sleep(0.1)


def server_warnings(hub: Hub) -> tuple[int, int]:
    """(slow-consumer, other) warnings and errors in the embedded nats-server's log."""
    lines = (hub.log.parent / "nats" / "nats-server.log").read_text(errors="replace").splitlines()
    bad = [line for line in lines if "[WRN]" in line or "[ERR]" in line]
    slow = sum("Slow Consumer" in line for line in bad)
    return slow, len(bad) - slow


def stop_hub(hub: Hub) -> int:
    hub.proc.send_signal(signal.SIGTERM)
    try:
        return hub.proc.wait(30)
    except subprocess.TimeoutExpired:
        hub.proc.kill()
        return hub.proc.wait()


def cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int) -> tuple[float, float]:
    """Resident set size now and at its peak (VmRSS, VmHWM), MiB."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


def child_pid(pid: int, name: str) -> int:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            text = stat.read_text()
            comm, rest = text.split("(", 1)[1].rpartition(")")[0], text.rpartition(")")[2].split()
            if comm == name and int(rest[1]) == pid:
                return int(stat.parent.name)
    raise RuntimeError(f"no {name} child of {pid}")


def machine_busy_s() -> float:
    """CPU seconds all cores spent running anything (``/proc/stat``: user, nice, system, irq, softirq)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLK_TCK


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Prometheus' histogram_quantile over (upper bound, cumulative count), bounds ascending."""
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return lower


def window_buckets(name: str, start: Samples, end: Samples) -> list[tuple[float, float]]:
    """A histogram's buckets over the window between two scrapes: (upper bound, cumulative count)."""
    name = f"{name}_bucket"
    return sorted(
        (float(dict(labels)["le"]), value - start[name].get(labels, 0.0))
        for labels, value in end[name].items()
    )


# ---- the run ----


@dataclass
class Commands:
    """Commands sent through the API (orchestrator side)."""

    window: tuple[float, float] = (math.inf, math.inf)
    issued: dict[str, float] = field(default_factory=dict)
    """command id -> time.monotonic() of the API call, for calls made in the window."""
    api_errors: int = 0


async def send_commands(stub: hub_pb2_grpc.HubServiceStub, sent: Commands, rate: float | None = None) -> None:
    """StopAgent through the API at ``rate`` per second (default: the fleet's command rate), round robin
    over devices, until cancelled."""
    loop = asyncio.get_running_loop()
    interval = 1.0 / (rate or COMMANDS_PER_DEVICE_S * N_DEVICES)
    pending: set[asyncio.Task[None]] = set()

    async def one(device: str) -> None:
        t = time.monotonic()
        req = H.StopAgentRequest(
            agent_id=f"{device}-agent", device_id=device, reason="bench", issued_by="bench"
        )
        try:
            reply = await stub.StopAgent(req, timeout=10)
        except grpc.RpcError:
            sent.api_errors += 1
            return
        if sent.window[0] <= t < sent.window[1]:
            sent.issued[reply.command_id] = t

    next_at, i = loop.time(), 0
    try:
        while True:
            task = asyncio.create_task(one(device_id(i % N_DEVICES)))
            pending.add(task)
            task.add_done_callback(pending.discard)
            i += 1
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))
    finally:
        await asyncio.gather(*pending, return_exceptions=True)


async def wait_online(hub: Hub, n: int, within: float) -> float:
    deadline = time.monotonic() + within
    while True:
        online = (await asyncio.to_thread(hub.scrape)).get("edgehub_hub_devices_online", {}).get((), 0.0)
        if online >= n or time.monotonic() > deadline:
            return online
        await asyncio.sleep(0.5)


async def list_devices(stub: hub_pb2_grpc.HubServiceStub) -> tuple[int, int, float]:
    """(devices listed, online, call seconds) through the API."""
    t = time.monotonic()
    reply = await stub.ListDevices(H.ListDevicesRequest(), timeout=60)
    return len(reply.devices), sum(d.online for d in reply.devices), time.monotonic() - t


async def measure(hub: Hub, workers: Sequence[multiprocessing.process.BaseProcess]) -> dict[str, float]:
    pids = {"hub": hub.proc.pid, "nats": child_pid(hub.proc.pid, "nats-server")}
    pids |= {f"worker{i}": int(w.pid or 0) for i, w in enumerate(workers)}
    before = await asyncio.to_thread(hub.scrape)
    cpu0, busy0, t0 = {k: cpu_s(p) for k, p in pids.items()}, machine_busy_s(), time.monotonic()
    await asyncio.sleep(WINDOW_S)
    cpu1, busy1, wall = {k: cpu_s(p) for k, p in pids.items()}, machine_busy_s(), time.monotonic() - t0
    after = await asyncio.to_thread(hub.scrape)
    used = {k: 100 * (cpu1[k] - cpu0[k]) / wall for k in pids}
    lag = window_buckets("edgehub_hub_heartbeat_lag_seconds", before, after)
    queue = window_buckets("edgehub_hub_heartbeat_queue_seconds", before, after)
    count = "edgehub_hub_heartbeat_lag_seconds_count"
    rss, peak = rss_mib(pids["hub"])
    bench = sum(v for k, v in used.items() if k.startswith("worker"))
    return {
        "t0": t0,
        "t1": t0 + wall,
        "lag_p50": histogram_quantile(lag, 0.50),
        "lag_p99": histogram_quantile(lag, 0.99),
        "queue_p50": histogram_quantile(queue, 0.50),
        "queue_p99": histogram_quantile(queue, 0.99),
        "lag_timed": after[count][()] - before[count][()],
        "hub_cpu": used["hub"],
        "nats_cpu": used["nats"],
        "bench_cpu": bench,
        "other_cpu": 100 * (busy1 - busy0) / wall - used["hub"] - used["nats"] - bench,
        "hub_rss": rss,
        "hub_rss_peak": peak,
        "online": after["edgehub_hub_devices_online"][()],
    }


async def run_fleet(hub: Hub) -> dict[str, float]:
    ctx = multiprocessing.get_context("spawn")
    done = ctx.Event()
    pipes, workers = [], []
    for w in range(WORKERS):
        ours, theirs = ctx.Pipe(duplex=False)
        args = (w, hub.nats, hub.trust, done, theirs)
        workers.append(ctx.Process(target=worker_main, args=args, daemon=True))
        pipes.append(ours)
        workers[-1].start()
    t0 = time.monotonic()
    sent = Commands()
    try:
        online = await wait_online(hub, N_DEVICES, 180)
        out: dict[str, float] = {"online_after_s": time.monotonic() - t0}
        assert online >= N_DEVICES, f"only {online} devices online after 180 s"
        async with grpc.aio.secure_channel(hub.api, hub.api_credentials()) as channel:
            stub = hub_pb2_grpc.HubServiceStub(channel)
            sender = asyncio.create_task(send_commands(stub, sent))
            await asyncio.sleep(WARMUP_S)
            sent.window = (time.monotonic(), math.inf)
            out |= await measure(hub, workers)
            sent.window = (out["t0"], out["t1"])
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            out["listed"], out["listed_online"], out["list_s"] = await list_devices(stub)
        await asyncio.sleep(COMMAND_GRACE_S)  # commands still in flight, or waiting for redelivery
    finally:
        done.set()
    logs: list[DeviceLog] = [await asyncio.to_thread(p.recv) for p in pipes]
    for process in workers:
        process.join(30)
    return out | device_figures(out, sent, logs)


def device_figures(out: dict[str, float], sent: Commands, logs: list[DeviceLog]) -> dict[str, float]:
    t0, t1 = out["t0"], out["t1"]
    handled = {c: t for log in logs for c, t in log.handled.items()}
    cmd_ms = [(handled[c] - t) * 1000 for c, t in sent.issued.items() if c in handled]
    put_ms = [d * 1000 for log in logs for t, d in log.puts if t0 <= t < t1]
    return {
        "cmd_sent": len(sent.issued),
        "cmd_lost": len(sent.issued.keys() - handled.keys()),
        "cmd_p50": pct(cmd_ms, 50) if cmd_ms else math.nan,
        "cmd_p99": pct(cmd_ms, 99) if cmd_ms else math.nan,
        "cmd_max": max(cmd_ms, default=math.nan),
        "api_errors": sent.api_errors,
        "resubscribes": sum(t0 <= t < t1 for log in logs for t in log.resubscribes),
        "beats_sent": len(put_ms),
        "beat_failures": sum(log.put_failures for log in logs),
        "put_p50": pct(put_ms, 50),
        "put_p99": pct(put_ms, 99),
    }


def report(r: dict[str, float], hub_exit: int) -> list[Check]:
    def ms(p50: str, p99: str) -> str:
        return f"{r[p50] * 1000:.1f} / {r[p99] * 1000:.1f}"

    print_table(
        f"one hub, {N_DEVICES:,} simulated devices (a NATS connection each, {WORKERS} processes), "
        f"heartbeat {HEARTBEAT_S:g} s, {COMMANDS_PER_DEVICE_S * N_DEVICES:g} commands/s, "
        f"{WINDOW_S:g} s window",
        ["figure", "value"],
        [
            ["heartbeat sent -> hub view lag p50 / p99 ms (hub histogram)", ms("lag_p50", "lag_p99")],
            ["  of which NATS stored -> hub view p50 / p99 ms", ms("queue_p50", "queue_p99")],
            [
                "  heartbeat put -> server ack p50 / p99 ms (device side)",
                f"{r['put_p50']:.1f} / {r['put_p99']:.1f}",
            ],
            [
                "heartbeats put / timed by the hub in the window",
                f"{r['beats_sent']:,.0f} / {r['lag_timed']:,.0f}",
            ],
            [
                "command API call -> device handler p50 / p99 / max ms",
                f"{r['cmd_p50']:.1f} / {r['cmd_p99']:.1f} / {r['cmd_max']:.0f}",
            ],
            [
                "commands sent in the window / lost / API errors",
                f"{r['cmd_sent']:,.0f} / {r['cmd_lost']:.0f} / {r['api_errors']:.0f}",
            ],
            ["command consumer re-subscribes in the window", f"{r['resubscribes']:,.0f}"],
            ["hub process CPU % of one core", f"{r['hub_cpu']:.1f}"],
            ["hub RSS / peak MiB", f"{r['hub_rss']:.0f} / {r['hub_rss_peak']:.0f}"],
            ["embedded nats-server CPU %", f"{r['nats_cpu']:.1f}"],
            ["simulated devices CPU % (all workers)", f"{r['bench_cpu']:.1f}"],
            [
                f"everything else CPU % (kernel, other processes; {os.cpu_count()} cores)",
                f"{r['other_cpu']:.1f}",
            ],
            ["devices online: hub gauge / ListDevices", f"{r['online']:.0f} / {r['listed_online']:.0f}"],
            ["ListDevices call (every twin read from KV) s", f"{r['list_s']:.2f}"],
            ["all devices online after start s", f"{r['online_after_s']:.1f}"],
            ["heartbeat puts failed / hub exit code", f"{r['beat_failures']:.0f} / {hub_exit}"],
            [
                "nats-server log: slow consumers / other warnings",
                f"{r['slow_consumers']:.0f} / {r['server_warnings']:.0f}",
            ],
        ],
    )
    n = N_DEVICES
    return [
        Check(
            "heartbeat_lag_p99_ms",
            round(r["lag_p99"] * 1000, 1),
            "ms",
            f"<= {LAG_TARGET_S * 1000:g}",
            r["lag_p99"] <= LAG_TARGET_S,
        ),
        Check("hub_cpu_percent", round(r["hub_cpu"], 1), "% of one core", "< 100", r["hub_cpu"] < 100),
        Check("devices_online_gauge", r["online"], "devices", f"== {n}", r["online"] == n),
        Check("devices_online_api", r["listed_online"], "devices", f"== {n}", r["listed_online"] == n),
        Check("commands_lost", r["cmd_lost"], "commands", "== 0", r["cmd_lost"] == 0 and r["cmd_sent"] > 0),
    ]


async def with_hub(run: Callable[[Hub], Awaitable[dict[str, Any]]]) -> tuple[dict[str, Any], int]:
    """``run`` against a hub started for it, in a temporary folder: its result (with the nats-server's
    warnings counted in) and the hub's exit code. On a failure the hub's log tail goes to stderr.
    ``PROFILE_HUB=FILE`` runs the hub under cProfile; ``KEEP_LOGS=DIR`` keeps the hub's and
    nats-server's logs there."""
    profile = os.environ.get("PROFILE_HUB", "")
    with tempfile.TemporaryDirectory() as d:
        hub = start_hub(Path(d), ["-m", "cProfile", "-o", profile] if profile else [])
        try:
            result = await run(hub)
        except BaseException:
            print(hub.log.read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            code = stop_hub(hub)
        result["slow_consumers"], result["server_warnings"] = server_warnings(hub)
        if keep := os.environ.get("KEEP_LOGS", ""):  # for a post-mortem
            for log in (hub.log, hub.log.parent / "nats" / "nats-server.log"):
                shutil.copy(log, Path(keep) / log.name)
    return result, code


async def main() -> None:
    result, code = await with_hub(run_fleet)
    checks = report(result, code)
    print_checks(checks)
    print(f"wrote {write_result('fleet', checks)}")


if __name__ == "__main__":
    asyncio.run(main())
