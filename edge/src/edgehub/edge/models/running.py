"""Which model this device runs, and its SHA-256 (the twin's ``model_sha256``).

The hub's choice (``UseModel``) is kept in ``<data_dir>/models/current.json`` (``Choice``, versioned),
so a restart runs the same model; without one the daemon runs ``[model] path``. The running file's
hash is computed once at start and cached in ``<data_dir>/models/hashes.json`` by path, size, mtime and
inode: a file that changed in any of those is hashed again. A chosen model is run only if its hash is
its name; otherwise the daemon runs ``[model] path`` and says why.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from edgehub.protocol.ids import InvalidId, check_sha256
from edgehub.sync.models import file_sha256

from ..datadir import MODELS_DIR, model_path

log = logging.getLogger("edgehub.edge.models")
CHOICE_VERSION = 1
HASHES_VERSION = 1


@dataclass(frozen=True, slots=True)
class Choice:
    """The model the hub told this device to run (``current.json``)."""

    sha256: str
    name: str = ""
    reason: str = ""
    chosen_at: float = 0.0


class ChoiceFile:
    """``<data_dir>/models/current.json``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / MODELS_DIR / "current.json"

    def get(self) -> Choice | None:
        """The kept choice (None: none, or unreadable: logged, and ``[model] path`` runs)."""
        try:
            data = json.loads(self.path.read_text())
            if data.pop("version", None) != CHOICE_VERSION:
                raise ValueError(f"version {data.get('version')!r}, this release reads {CHOICE_VERSION}")
            choice = Choice(**data)
            check_sha256(choice.sha256)
            return choice
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, InvalidId) as exc:
            log.error("%s is unreadable (%s): running [model] path", self.path, exc)
            return None

    def put(self, choice: Choice) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(".current.json.tmp")
        tmp.write_text(json.dumps({"version": CHOICE_VERSION, **asdict(choice)}))
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


class HashCache:
    """File hashes by (path, size, mtime, inode), kept in ``hashes.json`` across restarts."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / MODELS_DIR / "hashes.json"

    def _load(self) -> dict[str, list[object]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("version") != HASHES_VERSION:
            return {}
        entries = data.get("entries")
        return entries if isinstance(entries, dict) else {}

    def sha256(self, file: Path) -> str:
        """``file``'s SHA-256, from the cache when the file is unchanged (blocking: hashes a model)."""
        st = file.stat()
        key, stamp = str(file.resolve()), [st.st_size, st.st_mtime_ns, st.st_ino]
        entries = self._load()
        found = entries.get(key)
        if isinstance(found, list) and found[:3] == stamp and isinstance(found[3], str):
            return found[3]
        sha = file_sha256(file)
        entries[key] = [*stamp, sha]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(".hashes.json.tmp")
        tmp.write_text(json.dumps({"version": HASHES_VERSION, "entries": entries}))
        os.replace(tmp, self.path)
        return sha


@dataclass
class RunningModel:
    """The model the daemon runs now: its file, SHA-256 ('' until computed) and name."""

    path: Path | None
    sha256: str = ""
    name: str = ""
    since: float = 0.0


def chosen_model(data_dir: Path, hashes: HashCache) -> RunningModel | None:
    """The hub's kept choice when its file is there and its hash is its name (blocking); None
    otherwise (logged): the daemon then runs ``[model] path``."""
    choice = ChoiceFile(data_dir).get()
    if choice is None:
        return None
    path = model_path(data_dir, choice.sha256)
    if not path.is_file():
        log.error("the chosen model %s is gone from %s: running [model] path", choice.sha256[:12], path)
        return None
    if (sha := hashes.sha256(path)) != choice.sha256:
        log.error("the chosen model %s hashes to %s: not run; running [model] path", choice.sha256[:12], sha)
        return None
    return RunningModel(path, sha, choice.name, time.time())
