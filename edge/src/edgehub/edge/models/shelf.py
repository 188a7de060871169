"""The models this device holds in ``<data_dir>/models`` (issue 21 part 2), and what the twin says of
them (``HeldModel``).

Per model, named by its SHA-256: ``<sha>.gguf`` (only once its whole file's hash was checked),
``<sha>.gguf.part`` (being fetched) and ``<sha>.json``, its ``ModelRecord``: state (fetching, verified,
failed and why), and for a fetch the object it reads (the hub's nuid), the bytes it has and the stream
sequence to go on from, written after every chunk so a cut fetch resumes where it was. Every record
carries ``RECORD_VERSION``; a record this release cannot read is reported as failed, never trusted.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from edgehub.protocol.ids import InvalidId, check_sha256
from edgehub.protocol.v1 import models_pb2

from ..datadir import MODELS_DIR, model_path

log = logging.getLogger("edgehub.edge.models")
RECORD_VERSION = 1
FETCHING, VERIFIED, FAILED = "fetching", "verified", "failed"


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """What this device knows of one model (``<sha>.json``)."""

    sha256: str
    name: str = ""
    size: int = 0
    """The file's size as the hub stored it (0: not known yet)."""
    state: str = FETCHING
    error: str = ""
    """Why it failed ('' unless ``state`` is failed)."""
    nuid: str = ""
    """The hub's object the fetch reads (a model put again gets a new one: the fetch starts over)."""
    have: int = 0
    """Bytes of ``<sha>.gguf.part`` the fetch has written and counted."""
    next_seq: int = 0
    """The models stream's sequence the fetch goes on from (0: the object's first chunk)."""

    def held(self) -> models_pb2.HeldModel:
        have = self.size if self.state == VERIFIED else self.have
        return models_pb2.HeldModel(
            sha256=self.sha256, name=self.name, size=self.size, state=self.state, have=have, error=self.error
        )


class ModelShelf:
    """The models folder (see the module docstring). Blocking file calls, all small."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.folder = data_dir / MODELS_DIR

    def path(self, sha256: str) -> Path:
        return model_path(self.data_dir, sha256)

    def part(self, sha256: str) -> Path:
        return self.path(sha256).with_name(f"{sha256}.gguf.part")

    def _record_path(self, sha256: str) -> Path:
        return self.folder / f"{check_sha256(sha256)}.json"

    def get(self, sha256: str) -> ModelRecord | None:
        """The model's record (None: this device never heard of it)."""
        path = self._record_path(sha256)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            return ModelRecord(sha256, state=FAILED, error=f"its record is unreadable: {exc}")
        if not isinstance(data, dict) or data.pop("version", None) != RECORD_VERSION:
            return ModelRecord(sha256, state=FAILED, error=f"a record of another release ({path.name})")
        try:
            return ModelRecord(**{**data, "sha256": sha256})
        except TypeError as exc:
            return ModelRecord(sha256, state=FAILED, error=f"its record is unreadable: {exc}")

    def put(self, record: ModelRecord) -> ModelRecord:
        """Write ``record`` atomically (a crash leaves the old one or the new one)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._record_path(record.sha256)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps({"version": RECORD_VERSION, **asdict(record)}))
        os.replace(tmp, path)
        return record

    def fail(self, record: ModelRecord, error: str) -> ModelRecord:
        """Mark the model failed: nothing of it stays under the final name nor as a part."""
        self.path(record.sha256).unlink(missing_ok=True)
        self.part(record.sha256).unlink(missing_ok=True)
        log.error("model %s (%s) failed: %s", record.name, record.sha256[:12], error)
        return self.put(replace(record, state=FAILED, error=error, have=0, next_seq=0, nuid=""))

    def records(self) -> list[ModelRecord]:
        """Every model this device knows of, by name."""
        found = []
        for path in sorted(self.folder.glob("*.json")) if self.folder.is_dir() else ():
            try:
                sha = check_sha256(path.stem)
            except InvalidId:
                continue  # not a model's record (current.json, hashes.json)
            if (record := self.get(sha)) is not None:
                found.append(record)
        return sorted(found, key=lambda r: (r.name, r.sha256))

    def held(self) -> list[models_pb2.HeldModel]:
        """The twin's ``models``."""
        return [r.held() for r in self.records()]

    def fetching(self) -> list[ModelRecord]:
        """The fetches to go on with (after a restart, say)."""
        return [r for r in self.records() if r.state == FETCHING]
