"""The one config loader of both daemons: a TOML file, then environment overrides, validated by a
pydantic model of the config tree (one section per module).

Environment variables override file values as ``<PREFIX><SECTION>__<KEY>`` (double underscores
separate levels; ``EDGEHUB_EDGE__MODEL__N_THREADS=4``, ``EDGEHUB_HUB__HUB__ID=hub-2``). Lists and tables
are written as JSON (``'["read_file", "finish"]'``), scalars as plain text (the model converts them).
Unknown keys are errors, so a typo never silently falls back to a default. Every problem is raised as
the caller's config error, naming the key (or the variable) and the file.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

C = TypeVar("C", bound=BaseModel)


class ConfigErrorFactory(Protocol):
    """How a daemon raises its config error (the edge's ``ConfigError``, the hub's ``HubConfigError``)."""

    def __call__(self, message: str, *, key: str | None = None, path: str | None = None) -> Exception: ...


def env_overrides(env: Mapping[str, str], prefix: str, error: ConfigErrorFactory) -> dict[str, Any]:
    """The tree the ``prefix``ed variables of ``env`` spell."""
    tree: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith(prefix):
            continue
        parts = [p.lower() for p in name[len(prefix) :].split("__")]
        if not all(parts):
            raise error(f"{name}: empty level in the variable's name", key=name)
        node = tree
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise error(f"{name}: {part} is a value, not a section", key=name)
            node = child
        node[parts[-1]] = env_value(name, value, error)
    return tree


def env_value(name: str, value: str, error: ConfigErrorFactory) -> Any:
    """Lists and tables are JSON (``["read_file", "finish"]``); anything else is the text itself."""
    if value.lstrip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise error(f"{name}: not valid JSON ({exc})", key=name) from None
    return value


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` laid on ``base``, tables merged key by key."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


MAX_CONFIG_BYTES = 1 << 20
"""A config file is read up to this size (a larger one, or ``/dev/zero``, is refused, not read on)."""


def read_toml(path: Path, error: ConfigErrorFactory) -> dict[str, Any]:
    """The table in the TOML file at ``path``; every way it can fail is one ``error`` naming the file."""
    where = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise error("file not found", path=where) from None
    except IsADirectoryError:
        raise error("is a folder, not a TOML file", path=where) from None
    except PermissionError:
        raise error("not readable (permission denied)", path=where) from None
    except OSError as exc:  # a socket, a device that refuses reads, an I/O error
        raise error(f"cannot read it ({exc.strerror or exc})", path=where) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise error(f"over {MAX_CONFIG_BYTES:,} bytes: not a config file", path=where)
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise error(f"not UTF-8 text ({exc.reason} at byte {exc.start})", path=where) from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"not valid TOML: {exc}", path=where) from None


def load_config(
    model: type[C],
    path: Path | None,
    *,
    prefix: str,
    error: ConfigErrorFactory,
    env: Mapping[str, str] | None = None,
    under: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
) -> C:
    """``model`` from ``path`` (optional), then the ``prefix``ed environment variables of ``env`` (default:
    the process's). ``under``, given what file and environment set, returns settings laid beneath them
    (the edge's hardware profile): they fill only what neither sets."""
    data = read_toml(path, error) if path is not None else {}
    data = merge(data, env_overrides(os.environ if env is None else env, prefix, error))
    if under is not None:
        data = merge(under(data), data)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise error(f"{key}: {first['msg']}{more}", key=key, path=str(path) if path else None) from None
