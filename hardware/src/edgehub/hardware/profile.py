"""Hardware profiles: one TOML file per device class, validated by pydantic because humans write them.

A profile says which machines it is for (``[match]``) and what such a machine can afford
(``[runtime]``). Unknown keys are errors, so a typo in a criterion never silently widens a match.
The JSON schema (``profile_schema()``, ``edgehub hardware schema``) is generated from these models, so
editors and CI can check profiles without Python.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from .errors import ProfileError
from .machine import Accelerator, StorageClass

BUILTIN_PROFILES = Path(__file__).parent / "profiles"
"""The profiles shipped in the wheel."""

_MESSAGES = {"extra_forbidden": "unknown key", "missing": "required field missing"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Match(_Strict):
    """Criteria a machine must meet; every one given must hold, an empty ``[match]`` matches all.

    Text patterns are shell globs (``*``, ``?``, ``[...]``) compared case-insensitively; a list of
    patterns or classes means "any of these", a list of flags or accelerators means "all of these".
    """

    arch: list[str] = []
    """Kernel machine names, any of: ``x86_64``, ``aarch64``."""
    cpu_vendor: list[str] = []
    """Patterns, any of, against ``vendor_id`` or the ARM implementer (``GenuineIntel``, ``ARM``)."""
    cpu_model: list[str] = []
    """Patterns, any of, against the x86 model name or ARM core (``*Celeron*``, ``Cortex-A76``)."""
    device_model: list[str] = []
    """Patterns, any of, against the device-tree model or DMI vendor and product (``Raspberry Pi 5*``)."""
    cpu_flags: list[str] = []
    """CPU flags that must all be present (``avx2``, ``asimddp``)."""
    accelerators: list[Accelerator] = []
    """Accelerators that must all be present."""
    storage: list[StorageClass] = []
    """Classes of the primary disk, any of."""
    min_cores: int | None = Field(None, ge=1)
    max_cores: int | None = Field(None, ge=1)
    min_memory_mb: int | None = Field(None, ge=1)
    max_memory_mb: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _bounds(self) -> Match:
        for lo, hi in (("min_cores", "max_cores"), ("min_memory_mb", "max_memory_mb")):
            low, high = getattr(self, lo), getattr(self, hi)
            if low is not None and high is not None and low > high:
                raise ValueError(f"{lo} ({low}) is above {hi} ({high})")
        return self

    @property
    def names_product(self) -> bool:
        """True when the profile names a board or CPU rather than only bounding resources."""
        return bool(self.device_model or self.cpu_model)

    @property
    def criteria(self) -> int:
        """How many criteria are given: with ``names_product``, what makes one profile more specific."""
        return sum(1 for name in type(self).model_fields if getattr(self, name) not in (None, []))


class ModelFit(_Strict):
    """The model this class of device should run, and the largest that fits."""

    name: str = Field(min_length=1)
    """Recommended model (``gemma-3-270m-it``)."""
    quantisation: str = Field(min_length=1)
    """GGUF quantisation type (``Q4_K_M``)."""
    max_params_b: float = Field(gt=0, le=1000)
    """Largest model, in billions of parameters, that runs at a useful speed here."""
    max_file_mb: int = Field(ge=16)
    """Largest GGUF file; derive() also keeps it within half of the usable memory."""


class SnapshotPlan(_Strict):
    """Where the warm worker's CRIU images go and how large they may grow."""

    dir: Path | None = None
    """Image folder; None: the edge's default (``<data_dir>/snapshots``). Under /dev/shm or /run the image
    lives in RAM: fastest restore and no wear on SD cards, paid for in memory."""
    max_mb: int = Field(ge=16)
    """Largest image; derive() keeps a RAM-backed one within a quarter of the usable memory."""

    @model_validator(mode="after")
    def _absolute(self) -> SnapshotPlan:
        # a relative folder would depend on the daemon's working directory
        if self.dir is not None and not self.dir.is_absolute():
            raise ValueError(f"dir {str(self.dir)!r} must be an absolute path")
        return self


class SandboxLimits(_Strict):
    """Limits for each sandboxed command (the edge's ``[sandbox]``)."""

    memory_mb: int = Field(ge=16)
    """derive() keeps it within a quarter of the usable memory, so a command cannot starve the model."""
    max_pids: int = Field(64, ge=4)


class StorePlan(_Strict):
    """How much of the disk the edge's store may keep (the edge's ``[retention] budget_mb``)."""

    budget_mb: int = Field(1024, ge=16)
    """What retention keeps the store's data within, split among its kinds; derive() also keeps it
    within an eighth of the primary disk, so a small SD card is not filled by history."""


class Runtime(_Strict):
    """What a machine of this class can afford; ranges are those of the edge's ``[model]``."""

    threads: int = Field(ge=1, le=256)
    """llama.cpp threads; derive() uses at most one per usable core."""
    n_ctx: int = Field(ge=256, le=131072)
    n_batch: int = Field(ge=8, le=4096)
    """Kept small: llama.cpp holds n_batch x vocabulary logits (Gemma's vocabulary is 262k)."""
    model: ModelFit
    snapshot: SnapshotPlan
    sandbox: SandboxLimits
    store: StorePlan = StorePlan()


class Profile(_Strict):
    """One device class: which machines it is for and what they imply for the runtime."""

    version: Literal[1]
    """Format version: a later format gets a new number, and this loader refuses what it cannot read."""
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")
    """Must equal the file name without ``.toml``, so a folder can override a built-in by name."""
    description: str = Field(min_length=1)
    match: Match = Match()
    runtime: Runtime

    _source: Path | None = PrivateAttr(None)

    @property
    def source(self) -> Path | None:
        """The file this profile was loaded from."""
        return self._source


def profile_schema() -> dict[str, Any]:
    """JSON schema of a profile file (draft 2020-12)."""
    schema = Profile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def load_profile(path: Path) -> Profile:
    """Read and validate one profile; ProfileError names the file and the offending field."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ProfileError(path, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(path, f"cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(path, f"not valid TOML: {exc}") from None
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        # an unknown key is usually a typo, and explains the "missing" error its correct spelling causes
        err = min(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        field = ".".join(str(p) for p in err["loc"]) or None
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ProfileError(path, _MESSAGES.get(err["type"], err["msg"]) + more, field=field) from None
    if profile.name != path.stem:
        raise ProfileError(path, f"{profile.name!r} differs from the file name {path.stem!r}", field="name")
    profile._source = path
    return profile


def load_profiles(*folders: Path) -> tuple[Profile, ...]:
    """Every ``*.toml`` in ``folders`` (default: the built-in ones); a later folder overrides by name.

    One broken file fails the whole load: a device silently falling back to the generic profile because
    its own profile has a typo is worse than a clear error.
    """
    found: dict[str, Profile] = {}
    for folder in folders or (BUILTIN_PROFILES,):
        if not folder.is_dir():
            raise ProfileError(folder, "not a folder of profiles")
        for profile in _load_folder(folder):
            found[profile.name] = profile
    return tuple(sorted(found.values(), key=lambda p: p.name))


def _load_folder(folder: Path) -> Iterable[Profile]:
    return [load_profile(path) for path in sorted(folder.glob("*.toml"))]
