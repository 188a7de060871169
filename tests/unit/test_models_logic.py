"""The logic of models from the hub without a hub: the device's records of its models (versioned, a
failure leaves nothing under the model's name), the kept choice and the hash cache, the hub's check of
an upload (GGUF magic, declared hash and size), and a switch that is refused or whose new model does
not open (the old one comes back)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edgehub.edge.models import (
    Choice,
    ChoiceFile,
    HashCache,
    ModelRecord,
    ModelShelf,
    ModelSwitch,
    RunningModel,
    SwitchableBrain,
)
from edgehub.hub.errors import Refused
from edgehub.hub.fleet.models import Upload
from edgehub.llm import Brain, ModelGate
from edgehub.llm.fake import FakeBrain
from edgehub.protocol.v1 import hub_pb2, models_pb2
from edgehub.sync.errors import MessageRejected
from edgehub.sync.models import digest_of

SHA = hashlib.sha256(b"GGUF model").hexdigest()


def test_a_record_round_trips_and_one_of_another_release_is_reported_failed(tmp_path: Path) -> None:
    shelf = ModelShelf(tmp_path)
    shelf.put(ModelRecord(SHA, name="m", size=10, have=4, next_seq=7, nuid="N"))
    assert shelf.get(SHA) == ModelRecord(SHA, name="m", size=10, have=4, next_seq=7, nuid="N")
    assert [r.sha256 for r in shelf.fetching()] == [SHA]
    (tmp_path / "models" / "current.json").write_text("{}")  # not a model's record: left out
    assert [r.sha256 for r in shelf.records()] == [SHA]
    path = tmp_path / "models" / f"{SHA}.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "version": 99}))
    found = shelf.get(SHA)
    assert found is not None
    assert (found.state, found.error) == ("failed", f"a record of another release ({SHA}.json)")


def test_a_failed_model_leaves_nothing_under_its_name_nor_as_a_part(tmp_path: Path) -> None:
    shelf = ModelShelf(tmp_path)
    record = shelf.put(ModelRecord(SHA, name="m", size=10, have=4))
    shelf.path(SHA).write_bytes(b"GGUF")
    shelf.part(SHA).write_bytes(b"GG")
    shelf.fail(record, "sha256 mismatch")
    assert not shelf.path(SHA).exists()
    assert not shelf.part(SHA).exists()
    assert shelf.held() == [
        models_pb2.HeldModel(sha256=SHA, name="m", size=10, state="failed", error="sha256 mismatch")
    ]


def test_the_choice_is_kept_versioned_and_an_unreadable_one_is_ignored(tmp_path: Path) -> None:
    choices = ChoiceFile(tmp_path)
    assert choices.get() is None
    choices.put(Choice(SHA, "m", "why", 1.0))
    assert ChoiceFile(tmp_path).get() == Choice(SHA, "m", "why", 1.0)
    choices.path.write_text(json.dumps({"version": 2, "sha256": SHA}))
    assert choices.get() is None
    choices.path.write_text(json.dumps({"version": 1, "sha256": "not-a-hash"}))
    assert choices.get() is None


def test_the_hash_cache_hashes_again_a_file_that_changed(tmp_path: Path) -> None:
    file = tmp_path / "m.gguf"
    file.write_bytes(b"GGUF one")
    cache = HashCache(tmp_path)
    assert cache.sha256(file) == hashlib.sha256(b"GGUF one").hexdigest()
    file.write_bytes(b"GGUF two")
    os.utime(file, ns=(1, 1))  # even with an old mtime: the size (and inode) tell it apart
    assert cache.sha256(file) == hashlib.sha256(b"GGUF two").hexdigest()
    assert HashCache(tmp_path).sha256(file) == hashlib.sha256(b"GGUF two").hexdigest()


def test_the_object_digest_names_the_sha256() -> None:
    assert (
        digest_of(hashlib.sha256(b"").hexdigest()) == "SHA-256=47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU="
    )


def _upload(data: bytes, sha: str, size: int = 0) -> Upload:
    up = Upload(hub_pb2.AddModelChunk(name="m", sha256=sha, size=size))
    try:
        up.write(data)
        up.finish()
    finally:
        up.discard()
    return up


def test_the_hub_keeps_an_upload_only_as_a_gguf_of_the_declared_hash_and_size() -> None:
    good = b"GGUF" + b"\1" * 100
    assert _upload(good, hashlib.sha256(good).hexdigest()).size == 104
    with pytest.raises(Refused, match="not a GGUF file"):
        _upload(b"PK\3\4rest", hashlib.sha256(b"PK\3\4rest").hexdigest())
    with pytest.raises(Refused, match="the hub computed sha256"):
        _upload(good, SHA)
    with pytest.raises(Refused, match="ended at 104 bytes, 200 were declared"):
        _upload(good, hashlib.sha256(good).hexdigest(), 200)
    with pytest.raises(Refused, match="must declare the file's sha256"):
        Upload(hub_pb2.AddModelChunk(name="m"))


class NoAgents:
    @property
    def running(self) -> list[str]:
        return []

    @contextlib.asynccontextmanager
    async def hold(self, agent_id: str) -> AsyncIterator[None]:
        yield

    def schedule(self) -> None:
        pass


class Notes:
    def __init__(self) -> None:
        self.written: list[str] = []

    def note(self, agent_id: str, detail: str, name: str) -> None:
        self.written.append(detail)

    def active(self) -> list[str]:
        return ["a-1"]


def _switch(tmp_path: Path, opener: object) -> tuple[ModelSwitch, SwitchableBrain, Notes]:
    shelf = ModelShelf(tmp_path)
    brain = SwitchableBrain(FakeBrain(["x"]))
    notes = Notes()
    old = tmp_path / "old.gguf"
    switch = ModelSwitch(
        shelf, brain, ModelGate(brain), opener, RunningModel(old, "", "old"), NoAgents(), notes
    )  # type: ignore[arg-type]
    return switch, brain, notes


def _held(tmp_path: Path, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    shelf = ModelShelf(tmp_path)
    shelf.put(ModelRecord(sha, name="new", size=len(data), state="verified"))
    shelf.path(sha).write_bytes(data)
    return sha


def test_a_switch_is_refused_for_a_model_not_held_or_changed_on_disk(tmp_path: Path) -> None:
    switch, brain, notes = _switch(tmp_path, lambda path: FakeBrain(["y"]))
    before = brain.inner
    with pytest.raises(MessageRejected, match="not held verified on this device \\(not held\\)"):
        asyncio.run(switch.use(models_pb2.UseModel(sha256=SHA)))
    sha = _held(tmp_path, b"GGUF new")
    ModelShelf(tmp_path).path(sha).write_bytes(b"GGUF changed")
    with pytest.raises(MessageRejected, match="its file hashes to"):
        asyncio.run(switch.use(models_pb2.UseModel(sha256=sha)))
    assert ModelShelf(tmp_path).held()[0].state == "failed"
    assert brain.inner is before
    assert notes.written == []


def test_a_switch_whose_model_does_not_open_goes_back_to_the_old_one(tmp_path: Path) -> None:
    sha = _held(tmp_path, b"GGUF new")
    opened: list[Path] = []

    def opener(path: Path) -> Brain:
        opened.append(path)
        if path.name.startswith(sha):
            raise ValueError("bad tensors")
        return FakeBrain(["old again"])

    switch, brain, notes = _switch(tmp_path, opener)
    brain.owned = True  # as the daemon's own: closed by the swap, so it must be opened again
    with pytest.raises(MessageRejected, match="did not open: bad tensors"):
        asyncio.run(switch.use(models_pb2.UseModel(sha256=sha)))
    assert [p.name for p in opened] == [f"{sha}.gguf", "old.gguf"]
    assert brain.complete("p").text == "old again"
    assert (switch.running.sha256, ChoiceFile(tmp_path).get(), notes.written) == ("", None, [])

    ok, brain2, notes2 = _switch(tmp_path, lambda path: FakeBrain(["new"]))
    asyncio.run(ok.use(models_pb2.UseModel(sha256=sha, reason="r")))
    assert brain2.complete("p").text == "new"
    assert notes2.written == [f"model changed: old -> new ({sha[:12]}): r"]
    choice = ChoiceFile(tmp_path).get()
    assert choice is not None
    assert choice.sha256 == sha
