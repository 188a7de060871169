"""Models distributed by the hub (issue 21 part 2): a real hub subprocess and its nats-server, real edge
daemons enrolled with it, the operator's real ``edgehub models`` CLI.

A GGUF added to the hub is pushed to a device, fetched in chunks and verified there (its twin says
so); a fetch cut by killing the daemon mid-transfer resumes from the bytes it had; a tampered chunk
or a file changed on disk is refused and leaves nothing under the model's name; the hub refuses an
upload that is not a GGUF or whose hash is not the one declared; a device's credentials read the
models bucket but cannot write it; and ``UseModel`` switches a device to the real SmolLM2 model,
which its twin reports and a restart keeps.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import nats
import pytest
from nats.js.errors import NotFoundError

from edgehub.edge.app import EdgeDaemon
from edgehub.edge.config import EdgeConfig
from edgehub.edge.datadir import model_path
from edgehub.edge.models import ChoiceFile, ModelShelf
from edgehub.edge.uplink.identity import DeviceIdentity
from edgehub.llm import packaged_model_path
from edgehub.llm.fake import FakeBrain
from edgehub.protocol.v1 import agent_pb2, models_pb2
from edgehub.protocol.v1 import hub_pb2 as H  # noqa: N812 - the house alias
from edgehub.sync.models import CHUNK_SIZE, MODELS, MODELS_STREAM, chunk_subject
from tests.harness.edge_proc import start_edge
from tests.harness.hub import Hub, ready_hub
from tests.harness.wait import eventually
from tests.integration.test_fleet_policy import _idle, _wait_online, dead_letters, enrolled
from tests.integration.test_identity import stub

IDLE = "tests.integration.test_fleet_policy:_idle"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    with ready_hub(tmp_path_factory.mktemp("models"), "hub-models") as running:
        yield running


def _config(device: str, data: Path, **model: object) -> EdgeConfig:
    return EdgeConfig.model_validate({
        "device": {"id": device, "data_dir": str(data)},
        "tools": {"load_entry_points": False}, "hub": {"heartbeat_s": 0.3}, "model": model,
    })  # fmt: skip


@asynccontextmanager
async def running(cfg: EdgeConfig, *, own_brain: bool = False) -> AsyncIterator[EdgeDaemon]:
    async with EdgeDaemon(cfg, brain=None if own_brain else FakeBrain(_idle)) as edge:
        task = asyncio.create_task(edge.run())
        try:
            yield edge
        finally:
            edge.request_stop()
            await edge.shutdown()
            task.cancel()


def made_up_gguf(path: Path, size: int, seed: str) -> str:
    """A file with the GGUF magic and ``size`` bytes of deterministic noise; its sha256."""
    data, block = bytearray(b"GGUF"), hashlib.sha256(seed.encode()).digest()
    while len(data) < size:
        block = hashlib.sha256(block).digest()
        data += block * 64
    path.write_bytes(bytes(data[:size]))
    return hashlib.sha256(data[:size]).hexdigest()


async def models_cli(hub: Hub, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(hub.cli, "models", *args, timeout=600)


async def add(hub: Hub, file: Path, name: str) -> dict[str, str]:
    done = await models_cli(hub, "add", str(file), "--name", name, "--json")
    assert done.returncode == 0, done.stderr + done.stdout
    return dict(json.loads(done.stdout))


def held(edge: EdgeDaemon, sha: str) -> models_pb2.HeldModel | None:
    return next((m for m in edge.report().models if m.sha256 == sha), None)


def state_of(edge: EdgeDaemon, sha: str) -> str:
    found = held(edge, sha)
    return found.state if found is not None else ""


async def test_an_added_model_is_pushed_fetched_and_verified_and_bad_uploads_are_refused(
    hub: Hub, tmp_path: Path
) -> None:
    file = tmp_path / "tiny.gguf"
    sha = made_up_gguf(file, 5 * CHUNK_SIZE + 1234, "tiny")
    info = await add(hub, file, "tiny")
    assert (info["sha256"], int(info["size"]), info["name"]) == (sha, file.stat().st_size, "tiny")
    listed = await models_cli(hub, "list", "--json")
    assert sha in [json.loads(line)["sha256"] for line in listed.stdout.splitlines()]

    viewer = await asyncio.to_thread(hub.cli, "tokens", "create", "vic", "--role", "viewer")
    as_viewer = {"EDGEHUB_TOKEN": viewer.stdout.strip().splitlines()[-1], "EDGEHUB_TOKEN_FILE": ""}
    denied = await asyncio.to_thread(hub.cli, "models", "add", str(file), env=as_viewer)
    assert denied.returncode == 1  # the upload is a stream: its caller's role is checked all the same
    assert "AddModel needs role operator" in denied.stderr
    assert sha in (await asyncio.to_thread(hub.cli, "models", "list", "--json", env=as_viewer)).stdout

    text = tmp_path / "notes.gguf"
    text.write_text("not a model at all\n")
    refused = await models_cli(hub, "add", str(text))
    assert refused.returncode == 2
    assert "is not a GGUF file" in refused.stderr

    admin = (hub.trust / "admin.token").read_text().strip()
    channel, api = stub(hub, admin)
    with channel:
        wrong = hashlib.sha256(b"other").hexdigest()
        chunks = [H.AddModelChunk(name="x", sha256=wrong, data=file.read_bytes())]
        with pytest.raises(grpc.RpcError) as mismatch:
            api.AddModel(iter(chunks), timeout=30)  # type: ignore[attr-defined]
        assert mismatch.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"the hub computed sha256 {sha}" in str(mismatch.value.details())
        body = b"PK\x03\x04" + b"\0" * 100
        chunks = [H.AddModelChunk(name="zip", sha256=hashlib.sha256(body).hexdigest(), data=body)]
        with pytest.raises(grpc.RpcError) as not_gguf:
            api.AddModel(iter(chunks), timeout=30)  # type: ignore[attr-defined]
        assert not_gguf.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a GGUF file" in str(not_gguf.value.details())

    cfg = await enrolled(hub, "pi-fetch", tmp_path)
    async with running(cfg) as edge:
        await _wait_online(hub, "pi-fetch")
        pushed = await models_cli(hub, "push", "tiny", "--devices", "pi-fetch")
        assert pushed.returncode == 0, pushed.stderr
        await eventually(lambda: state_of(edge, sha) == "verified", within=60, what="tiny verified")
        path = model_path(cfg.device.data_dir, sha)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sha
        assert not path.with_name(f"{sha}.gguf.part").exists()
        seen = held(edge, sha)
        assert seen is not None
        assert (seen.have, seen.size, seen.name) == (file.stat().st_size, file.stat().st_size, "tiny")

        def hub_sees_it() -> bool:
            got = hub.cli("devices", "get", "pi-fetch", "--json")
            models = json.loads(got.stdout).get("twin", {}).get("models", [])
            return any(m["sha256"] == sha and m["state"] == "verified" for m in models)

        await eventually(hub_sees_it, within=30, what="the hub's view of the twin shows tiny verified")
        shown = await asyncio.to_thread(hub.cli, "devices", "get", "pi-fetch")
        assert f"tiny {sha[:12]} verified" in shown.stdout, shown.stdout
        assert edge.report().model_sha256 == ""  # the test's fake brain has no file

        not_held = hashlib.sha256(b"nothing").hexdigest()
        never = tmp_path / "never.gguf"
        made_up_gguf(never, 1000, "never")
        info2 = await add(hub, never, "never")
        used = await models_cli(hub, "use", info2["sha256"], "--devices", "pi-fetch")
        assert used.returncode == 0, used.stderr
        reasons = await dead_letters(hub, "pi-fetch", 1)
        assert f"model {info2['sha256'][:12]} is not held verified on this device (not held)" in reasons[0]
        assert not_held not in reasons[0]

    removed = await models_cli(hub, "remove", "never")
    assert removed.returncode == 0, removed.stderr
    listed = await models_cli(hub, "list", "--json")
    assert info2["sha256"] not in listed.stdout


async def test_a_fetch_cut_by_a_killed_daemon_resumes_from_the_bytes_it_had(hub: Hub, tmp_path: Path) -> None:
    file = tmp_path / "big.gguf"
    size = 40 * CHUNK_SIZE + 77
    sha = made_up_gguf(file, size, "big")
    await add(hub, file, "big")
    data = tmp_path / "pi-cut"
    done = await asyncio.to_thread(hub.enroll, "pi-cut", data)
    assert done.returncode == 0, done.stderr
    config = {
        "device": {"id": "pi-cut", "data_dir": str(data)},
        "tools": {"load_entry_points": False},
        "hub": {"heartbeat_s": 0.3},
    }
    proc = start_edge(config, IDLE, env={"EDGEHUB_FAILPOINTS": "model_fetch.chunk@12"})
    try:
        await _wait_online(hub, "pi-cut")
        pushed = await models_cli(hub, "push", sha, "--devices", "pi-cut")
        assert pushed.returncode == 0, pushed.stderr
        assert await asyncio.to_thread(proc.wait, 60) == -signal.SIGKILL  # cut after its 12th chunk
    finally:
        if proc.poll() is None:
            proc.kill()
    shelf = ModelShelf(data)
    cut = shelf.get(sha)
    assert cut is not None
    assert (cut.state, cut.have) == ("fetching", 12 * CHUNK_SIZE)
    assert shelf.part(sha).stat().st_size == 12 * CHUNK_SIZE
    assert not shelf.path(sha).exists()

    async with running(_config("pi-cut", data)) as edge:
        assert edge.parts.models is not None
        await eventually(
            lambda: state_of(edge, sha) == "verified", within=60, what="big verified after resume"
        )
        fetcher = edge.parts.models.fetcher
        assert fetcher is not None
        assert fetcher.fetched == size - 12 * CHUNK_SIZE  # it went on; it did not start over
    assert hashlib.sha256(shelf.path(sha).read_bytes()).hexdigest() == sha


async def tamper_one_chunk(hub: Hub, sha: str) -> None:
    """As someone with the hub's credentials: replace the object's third chunk by other bytes of the same
    length (the stream appends the new one at its end, so the chunks are read in another order)."""
    nc = await nats.connect(hub.url, user_credentials=hub.creds("tamperer"))
    try:
        js = nc.jetstream()
        info = await (await js.object_store(MODELS)).get_info(sha)
        assert info.nuid is not None
        subject, seq = chunk_subject(info.nuid), 1
        seqs = []
        while True:
            try:
                msg = await js.get_msg(MODELS_STREAM, seq=seq, subject=subject, next=True, direct=True)
            except NotFoundError:
                break
            seqs.append((int(msg.seq or 0), msg.data or b""))
            seq = int(msg.seq or 0) + 1
        third_seq, third = seqs[2]
        await js.delete_msg(MODELS_STREAM, third_seq)
        await js.publish(subject, bytes(b ^ 0xFF for b in third))
    finally:
        await nc.close()


async def test_a_tampered_chunk_and_a_file_changed_on_disk_are_refused(hub: Hub, tmp_path: Path) -> None:
    bad, good = tmp_path / "bad.gguf", tmp_path / "good.gguf"
    bad_sha = made_up_gguf(bad, 6 * CHUNK_SIZE, "bad")
    good_sha = made_up_gguf(good, 3 * CHUNK_SIZE + 5, "good")
    await add(hub, bad, "bad")
    await add(hub, good, "good")
    await tamper_one_chunk(hub, bad_sha)
    cfg = await enrolled(hub, "pi-bad", tmp_path)
    async with running(cfg) as edge:
        await _wait_online(hub, "pi-bad")
        for name in ("bad", "good"):
            pushed = await models_cli(hub, "push", name, "--devices", "pi-bad")
            assert pushed.returncode == 0, pushed.stderr
        await eventually(lambda: state_of(edge, bad_sha) == "failed", within=60, what="bad refused")
        failed = held(edge, bad_sha)
        assert failed is not None
        assert failed.error.startswith("sha256 mismatch: the fetched bytes hash to")
        shelf = ModelShelf(cfg.device.data_dir)
        assert not shelf.path(bad_sha).exists()
        assert not shelf.part(bad_sha).exists()

        await eventually(lambda: state_of(edge, good_sha) == "verified", within=60, what="good verified")
        with shelf.path(good_sha).open("r+b") as f:  # changed on disk after it was verified
            f.seek(CHUNK_SIZE)
            f.write(b"\0\1\2\3")
        used = await models_cli(hub, "use", "good", "--devices", "pi-bad")
        assert used.returncode == 0, used.stderr
        reasons = await dead_letters(hub, "pi-bad", 1)
        assert f"model {good_sha[:12]}: its file hashes to" in reasons[0]
        assert state_of(edge, good_sha) == "failed"
        assert not shelf.path(good_sha).exists()
        assert ChoiceFile(cfg.device.data_dir).get() is None
        assert isinstance(edge.brain.inner, FakeBrain)  # still the model it ran


async def _ignore(exc: Exception) -> None:
    """Permission violations are reported here too; the calls below fail on their own."""


async def test_a_devices_credentials_read_the_models_bucket_but_cannot_write_it(
    hub: Hub, tmp_path: Path
) -> None:
    file = tmp_path / "ro.gguf"
    sha = made_up_gguf(file, CHUNK_SIZE + 3, "ro")
    await add(hub, file, "ro")
    done = await asyncio.to_thread(hub.enroll, "pi-ro", tmp_path / "pi-ro")
    assert done.returncode == 0, done.stderr
    identity = DeviceIdentity.load(tmp_path / "pi-ro" / "identity", "pi-ro")
    assert identity is not None
    nc = await nats.connect(
        list(identity.nats_urls), user_credentials=str(identity.creds), inbox_prefix=identity.inbox_prefix,
        max_reconnect_attempts=1, error_cb=_ignore,
    )  # fmt: skip
    try:
        js = nc.jetstream(timeout=2)
        objects = await js.object_store(MODELS)
        info = await objects.get_info(sha)
        assert info.size == CHUNK_SIZE + 3
        assert info.nuid is not None
        first = await js.get_msg(
            MODELS_STREAM, seq=1, subject=chunk_subject(info.nuid), next=True, direct=True
        )
        assert (first.data or b"").startswith(b"GGUF")
        with pytest.raises(Exception):  # noqa: B017,PT011 - a permissions violation: no ack, or an error
            await objects.put("forged", b"GGUF forged")
        with pytest.raises(Exception):  # noqa: B017,PT011
            await js.publish(chunk_subject(info.nuid), b"forged chunk", timeout=2)
        with pytest.raises(Exception):  # noqa: B017,PT011
            await js.purge_stream(MODELS_STREAM)
    finally:
        await nc.close()
    check = await nats.connect(hub.url, user_credentials=hub.creds("checker"))
    try:
        objects = await check.jetstream().object_store(MODELS)
        with pytest.raises(NotFoundError):
            await objects.get_info("forged")
        assert (await objects.get(sha)).data == file.read_bytes()  # untouched
    finally:
        await check.close()


_NOTES = itertools.count()
WORDS = ["pump", "valve", "sensor", "motor", "belt", "gauge", "relay", "filter", "boiler", "drain"]


def _slow_step(prompt: str) -> str:
    """A fake model's step that keeps the agent running (a new note each time, so the stuck monitor
    sees progress), slowly enough that a switch finds it mid-run."""
    time.sleep(0.2)
    n = next(_NOTES)
    thought = f"note {n}: {WORDS[n % len(WORDS)]} {WORDS[(n * 7) % len(WORDS)]} {n * n}"
    return json.dumps({"thought": thought, "tool": "remember", "args": {"key": f"k{n}", "value": "v"}})


async def test_use_model_switches_a_device_to_the_pushed_model_and_a_restart_keeps_it(
    hub: Hub, tmp_path: Path
) -> None:
    smol = packaged_model_path("SmolLM2-135M-Instruct.Q4_1")
    info = await add(hub, smol, "smollm2")
    sha = info["sha256"]
    cfg = await enrolled(hub, "pi-use", tmp_path)
    async with EdgeDaemon(cfg, brain=FakeBrain(_slow_step)) as edge:
        task = asyncio.create_task(edge.run())
        try:
            await _wait_online(hub, "pi-use")
            agent = edge.submit("keep taking notes", budget=agent_pb2.Budget(max_steps=5000))
            pushed = await models_cli(hub, "push", "smollm2", "--devices", "pi-use")
            assert pushed.returncode == 0, pushed.stderr
            await eventually(lambda: state_of(edge, sha) == "verified", within=120, what="smollm2 verified")
            before = edge.brain.fingerprint
            used = await models_cli(hub, "use", "smollm2", "--devices", "pi-use", "--reason", "smaller")
            assert used.returncode == 0, used.stderr
            await eventually(lambda: edge.report().model_sha256 == sha, within=120, what="it runs smollm2")
            assert edge.brain.fingerprint != before
            assert edge.report().model_name == "smollm2"
            changed = [
                e.detail
                for e in edge.store.mind_log(agent)
                if e.kind == agent_pb2.STEP_KIND_WARNING and e.detail.startswith("model changed")
            ]
            assert changed == [f"model changed: {_name(cfg)} -> smollm2 ({sha[:12]}): smaller"]
            choice = ChoiceFile(cfg.device.data_dir).get()
            assert choice is not None
            assert (choice.sha256, choice.name) == (sha, "smollm2")
            await edge.parts.scheduler.stop_agent(agent, "test over")
        finally:
            edge.request_stop()
            await edge.shutdown()
            task.cancel()

    async with running(cfg, own_brain=True) as again:  # its own brain: the kept choice, verified
        await eventually(lambda: again.report().model_sha256 == sha, within=60, what="restart runs smollm2")
        assert again.report().model_name == "smollm2"
        assert again.brain.fingerprint == again.brain.inner.fingerprint
        assert again.parts.models is not None
        assert again.parts.models.running.path == model_path(cfg.device.data_dir, sha)


def _name(cfg: EdgeConfig) -> str:
    """How the model before the switch is named in the mind-log: the configured model's file name."""
    from edgehub.llm.settings import DEFAULT_MODEL_NAME

    return cfg.model.path.stem if cfg.model.path else DEFAULT_MODEL_NAME
