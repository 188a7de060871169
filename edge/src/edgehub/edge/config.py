"""Edge daemon configuration: a typed tree loaded from TOML, then environment overrides.

Environment variables override file values with ``EDGEHUB_EDGE__<SECTION>__<KEY>`` (double
underscores separate levels), e.g. ``EDGEHUB_EDGE__MODEL__N_THREADS=4``; lists as JSON
(``EDGEHUB_EDGE__TOOLS__ENABLED='["read_file", "finish"]'``). Unknown keys are errors,
so a typo never silently falls back to a default. Nothing here reads global state: the caller passes
the loaded config to the components that need it.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError

ENV_PREFIX = "EDGEHUB_EDGE__"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceConfig(_Section):
    id: str = Field("local", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    """Device identity (assigned at enrollment once the hub issue lands)."""
    data_dir: Path = Path(".edgehub/edge")
    """Where the store, agent workspaces and snapshots live."""


class ModelConfig(_Section):
    path: Path | None = None
    """GGUF file; default: the Gemma 3 270M package's model, assembled on first use."""
    n_ctx: int = Field(2048, ge=256, le=131072)
    n_threads: int | None = Field(None, ge=1, le=256)
    """None: one per available core."""
    n_batch: int = Field(64, ge=8, le=4096)
    """Small on purpose: llama.cpp keeps n_batch x vocab logits (Gemma's vocab is 262k)."""
    seed: int = 0
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    """0 = greedy: reproducible steps."""
    max_action_tokens: int = Field(192, ge=16, le=4096)


class AgentConfig(_Section):
    max_steps: int = Field(16, ge=1)
    max_tokens: int = Field(200_000, ge=1)
    """Token budget (prompt evaluated + generated) per agent."""
    max_tool_calls: int = Field(32, ge=1)
    max_wall_seconds: float = Field(900.0, gt=0)
    window_tokens: int | None = Field(None, ge=64)
    """L1 budget for recent turns; None: what the context leaves after the fixed prompt."""
    observation_chars: int = Field(600, ge=32)
    """Observations longer than this are truncated before the model sees them."""
    max_concurrent: int = Field(2, ge=1)
    """Agents stepping at once (they share the model; calls to it are serialised)."""


class ToolsConfig(_Section):
    enabled: list[str] | None = None
    """Tool names offered to agents; None: every registered tool."""
    load_entry_points: bool = True
    """Load third-party tools from the ``edgehub.tools`` entry point group."""
    command_timeout_s: float = Field(20.0, gt=0)


class EdgeConfig(_Section):
    device: DeviceConfig = DeviceConfig()
    model: ModelConfig = ModelConfig()
    agent: AgentConfig = AgentConfig()
    tools: ToolsConfig = ToolsConfig()

    @property
    def store_path(self) -> Path:
        return self.device.data_dir / "edge.db"

    @property
    def workspaces(self) -> Path:
        return self.device.data_dir / "workspaces"


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _env_value(name, value)
    return tree


def _env_value(name: str, value: str) -> Any:
    """Lists and tables are written as JSON (``["read_file", "finish"]``); scalars as plain text."""
    if value.lstrip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{name}: not valid JSON ({exc})", key=name) from None
    return value


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None) -> EdgeConfig:
    """Load ``path`` (optional) and apply ``env`` overrides; raise ConfigError naming the bad key."""
    data: dict[str, Any] = {}
    where = str(path) if path else None
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError("file not found", path=where) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"not valid TOML: {exc}", path=where) from None
    data = _merge(data, _env_overrides(os.environ if env is None else env))
    try:
        return EdgeConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{key}: {err['msg']}{more}", key=key, path=where) from None
