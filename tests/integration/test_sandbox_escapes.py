"""Escape attempts from a sandboxed command, on real bubblewrap and real cgroups: every one fails and
comes back as an observation, and the host is unchanged."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edgehub.edge.agent.tools import ToolContext, ToolOutput, builtin_tools
from edgehub.edge.config import EdgeConfig, SandboxConfig
from edgehub.edge.safety import BwrapSandbox, HostRunner, Limits, SandboxUnavailable
from edgehub.edge.safety.build import build_sandbox
from edgehub.edge.store import SqliteStore


@pytest.fixture
def sandbox(tmp_path: Path) -> BwrapSandbox:
    sb = BwrapSandbox(Limits(memory_mb=64, max_pids=32, cpu_seconds=2, file_mb=8), hide=(tmp_path,))
    assert sb.cgroups is not None, f"cgroup limits unavailable here: {sb.cgroup_problem}"
    return sb


@pytest.fixture
def ctx(tmp_path: Path, sandbox: BwrapSandbox) -> ToolContext:
    ws = tmp_path / "data" / "workspaces" / "a1"
    ws.mkdir(parents=True)
    store = SqliteStore.open(tmp_path / "data" / "edge.db", device_id="d")
    return ToolContext("a1", 0, "a1/0", ws, store, sandbox=sandbox)


async def run(ctx: ToolContext, command: str, timeout_s: float = 5) -> ToolOutput:
    tool = {t.spec.name: t for t in builtin_tools(command_timeout_s=timeout_s)}["run_command"]
    return await tool({"command": command}, ctx)


@pytest.fixture
async def listener() -> AsyncIterator[tuple[int, list[bytes]]]:
    got: list[bytes] = []

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        got.append(await r.read(100))
        w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield port, got
    server.close()
    await server.wait_closed()


async def test_a_command_runs_in_the_workspace_and_sees_its_files(ctx: ToolContext) -> None:
    (ctx.workspace / "in.txt").write_text("from host")
    out = await run(ctx, "cat in.txt; echo made > out.txt; pwd")
    assert out.ok, out.output
    assert "from host" in out.output
    assert "/workspace" in out.output
    assert (ctx.workspace / "out.txt").read_text() == "made\n"


async def test_no_socket_reaches_the_host_not_even_loopback(
    ctx: ToolContext, listener: tuple[int, list[bytes]]
) -> None:
    port, got = listener
    script = f"import socket; s = socket.create_connection(('127.0.0.1', {port}), timeout=2); s.send(b'leak')"
    out = await run(ctx, f'python3 -c "{script}"')
    await asyncio.sleep(0.2)
    assert not out.ok
    assert "Connection refused" in out.output or "unreachable" in out.output
    assert got == []
    dns = await run(ctx, "python3 -c \"import socket; socket.getaddrinfo('example.com', 443)\"")
    assert not dns.ok


async def test_writes_outside_the_workspace_fail(ctx: ToolContext, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    out = await run(
        ctx,
        f"echo x > {outside}; echo x > /usr/evil; echo x > /etc/evil; echo x > ../escape; "
        "ln -s / root && echo x > root/evil2; echo x > /tmp/private && echo tmp-ok",
    )
    assert "tmp-ok" in out.output  # a private /tmp is writable; nothing else outside the workspace is
    assert (
        _on_host(
            outside, Path("/usr/evil"), Path("/etc/evil"), Path("/evil2"), ctx.workspace.parent / "escape"
        )
        == []
    )
    assert _on_host(Path("/tmp/private")) == []


def _on_host(*paths: Path) -> list[Path]:
    return [p for p in paths if p.exists()]


async def test_the_daemons_config_keys_and_store_are_not_readable(ctx: ToolContext, tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "vault.key").write_bytes(b"k" * 32)
    secret_cfg = tmp_path / "edge.toml"
    secret_cfg.write_text("token = 'hub-secret-123'\n")
    out = await run(ctx, f"cat {data}/vault.key {data}/edge.db {secret_cfg} /etc/shadow 2>&1; env")
    assert "kkkk" not in out.output
    assert "hub-secret-123" not in out.output
    assert "SQLite format" not in out.output
    assert out.output.count("No such file or directory") == 4, out.output
    assert "EDGEHUB_IDEMPOTENCY_KEY=a1/0" in out.output
    assert "HOME=/workspace" in out.output
    listing = await run(ctx, "ls /")
    assert set(listing.output.split()[3:]) <= {
        "bin",
        "dev",
        "etc",
        "lib",
        "lib64",
        "proc",
        "sbin",
        "tmp",
        "usr",
        "workspace",
    }


async def test_a_fork_bomb_hits_the_process_limit(ctx: ToolContext) -> None:
    out = await run(ctx, "bomb() { bomb | bomb & }; bomb; sleep 1; echo done", timeout_s=8)
    assert not out.ok
    assert "process limit of 32 reached" in out.output, out.output
    assert _processes_with("bomb") == []


async def test_allocating_past_the_memory_limit_is_killed(ctx: ToolContext) -> None:
    out = await run(ctx, "python3 -c 'x = bytearray(512 * 1024 * 1024); print(\"allocated\")'")
    assert (out.ok, out.error) == (False, "limit")
    assert "memory limit of 64 MB exceeded" in out.output
    assert "allocated" not in out.output


async def test_burning_cpu_past_the_limit_is_killed(ctx: ToolContext) -> None:
    out = await run(ctx, "python3 -c 'while True: pass'", timeout_s=20)
    assert (out.ok, out.error) == (False, "limit")
    assert "CPU-time limit of 2 s" in out.output


async def test_running_past_the_wall_time_limit_is_killed(ctx: ToolContext) -> None:
    out = await run(ctx, "sleep 60", timeout_s=1)
    assert (out.ok, out.error) == (False, "timeout")
    assert "wall-time limit of 1 s" in out.output


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.parametrize(
    "detach",
    ["sleep {m} &", "setsid sleep {m} &", "nohup sleep {m} >/dev/null 2>&1 &", "(sleep {m} &) ; disown"],
)
async def test_no_child_outlives_the_call(ctx: ToolContext, detach: str) -> None:
    marker = str(1000 + uuid.uuid4().int % 9000)  # sleep's argument doubles as a unique marker
    out = await run(ctx, detach.format(m=marker) + "\necho started")
    assert "started" in out.output
    await asyncio.sleep(0.3)
    assert _processes_with(f"sleep\0{marker}") == []


def test_without_bubblewrap_commands_are_refused_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on PATH
    cfg = EdgeConfig.model_validate({"device": {"data_dir": str(tmp_path)}})
    runner, problem = build_sandbox(cfg)
    assert runner is None
    assert "install the 'bubblewrap' package" in problem
    with pytest.raises(SandboxUnavailable):
        BwrapSandbox()
    host, _ = build_sandbox(cfg.model_copy(update={"sandbox": SandboxConfig(mode="off")}))
    assert isinstance(host, HostRunner)


@pytest.fixture
async def http_server() -> AsyncIterator[int]:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        w.write(b"HTTP/1.0 200 OK\r\nContent-Length: 11\r\n\r\nhello-grant")
        await w.drain()
        w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def test_a_network_grant_opens_only_the_named_host_and_only_through_the_proxy(
    ctx: ToolContext, http_server: int
) -> None:
    port = http_server
    granted_ctx = dataclasses.replace(ctx, network=(f"localhost:{port}",))
    out = await run(granted_ctx, f"curl -sS -m 5 http://localhost:{port}/")
    assert out.ok, out.output
    assert "hello-grant" in out.output
    assert f"network: allowed localhost:{port}" in out.output
    raw = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)"
    direct = await run(granted_ctx, f'python3 -c "{raw}"')
    assert not direct.ok  # the grant is for the proxy path, not for raw sockets
    other = await run(
        dataclasses.replace(ctx, network=("docs.example.com:443",)), f"curl -sS -m 5 http://localhost:{port}/"
    )
    assert "hello-grant" not in other.output
    assert f"network: denied localhost:{port}" in other.output
    none = await run(ctx, f"curl -sS -m 5 http://localhost:{port}/")
    assert "hello-grant" not in none.output
    assert "network:" not in none.output
