"""What a snapshot image was taken on, and whether this machine can restore it.

A CRIU image is only good on the kernel, CPU, CRIU, Python runtime and model it was dumped with: a
restore elsewhere fails in CRIU at best and runs wrong code at worst (a reinstalled llama.cpp library
of the same size). The manifest records each, and ``refusal()`` names the first that differs, so a
mismatched image is refused before CRIU runs and the worker starts cold instead.
"""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..jsontypes import JsonObject

FORMAT = 1
"""Version of the manifest and of the image layout; bumped when either changes."""


@dataclass(frozen=True, slots=True)
class Manifest:
    """Identity of a snapshot image (``manifest.json`` beside CRIU's files)."""

    format: int
    """``FORMAT`` of the edgehub that wrote it."""
    kernel: str
    """``uname -r`` at dump time: restores across kernel upgrades are refused."""
    cpu_flags: tuple[str, ...]
    """/proc/cpuinfo flags at dump time: this CPU must have every one of them."""
    criu_version: str
    """``criu --version`` of the dumping binary: the restoring one must be the same."""
    runtime: str
    """Python version and the llama.cpp library (path, size, mtime): the code the image maps."""
    model: str
    """The brain's fingerprint (model file hash prefix + n_ctx)."""
    settings: JsonObject = field(default_factory=dict)
    """The ``LlamaSettings`` the worker was opened with (path as text)."""
    pid: int = 0
    """The worker's pid, which CRIU restores and which must be free."""
    socket: str = ""
    """The Unix socket the worker listens on (CRIU re-binds it at restore)."""
    cached_tokens: int = 0
    """Tokens in the worker's prompt cache when dumped; the restored worker must report the same."""
    files: dict[str, int] = field(default_factory=dict)
    """Size of each CRIU file in the image: a truncated or damaged image is refused before CRIU reads
    it (CRIU waited until its timeout on a truncated page file)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Parse; ValueError on anything malformed (missing or unknown keys, wrong types)."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("manifest is not a JSON object")
        try:
            data["cpu_flags"] = tuple(data["cpu_flags"])
            manifest = cls(**data)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"manifest is malformed ({exc})") from None
        if not isinstance(manifest.format, int) or not isinstance(manifest.pid, int):
            raise ValueError("manifest is malformed (format and pid must be integers)")
        return manifest

    def refusal(self, here: Manifest) -> str | None:
        """Why an image with this manifest must not be restored where ``here`` describes; None: go."""
        if self.format != here.format:
            return f"image format {self.format}, this edgehub writes {here.format}"
        if self.kernel != here.kernel:
            return f"kernel changed ({self.kernel} -> {here.kernel})"
        missing = sorted(set(self.cpu_flags) - set(here.cpu_flags))
        if missing:
            return (
                f"this CPU lacks {len(missing)} feature(s) the image was taken with: {' '.join(missing[:8])}"
            )
        if self.criu_version != here.criu_version:
            return f"CRIU changed ({self.criu_version} -> {here.criu_version})"
        if self.runtime != here.runtime:
            return "Python or llama.cpp changed since the image was taken"
        if self.model != here.model:
            return f"model changed ({self.model} -> {here.model})"
        if self.settings != here.settings:
            return "model settings changed since the image was taken"
        return None


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, ...]:
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return tuple(sorted(set(line.split(":", 1)[1].split())))
    except OSError:
        pass
    return ()


def runtime_id() -> str:
    """Python's version and the llama.cpp shared library the worker maps (found without loading it)."""
    import importlib.util

    parts = [sys.version.split()[0]]
    spec = importlib.util.find_spec("llama_cpp")
    if spec is not None and spec.origin:
        lib_dir = Path(spec.origin).parent / "lib"
        for lib in sorted(lib_dir.glob("*.so*")) if lib_dir.is_dir() else []:
            st = lib.stat()
            parts.append(f"{lib.name}:{st.st_size}:{st.st_mtime_ns}")
    return " ".join(parts)


def machine(*, criu_version: str, model: str, settings: JsonObject) -> Manifest:
    """This machine as a manifest (pid, socket and cache left empty: they describe an image)."""
    return Manifest(
        format=FORMAT,
        kernel=platform.release(),
        cpu_flags=cpu_flags(),
        criu_version=criu_version,
        runtime=runtime_id(),
        model=model,
        settings=settings,
    )
