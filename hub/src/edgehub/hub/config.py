"""Hub daemon configuration: TOML, then ``EDGEHUB_HUB__<SECTION>__<KEY>`` environment overrides."""

from __future__ import annotations

import json
import os
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import HubConfigError

ENV_PREFIX = "EDGEHUB_HUB__"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NatsConfig(_Section):
    url: str | None = None
    """An existing NATS cluster (production); None: start an embedded nats-server."""
    embedded_port: int = Field(4222, ge=0, le=65535)
    """Port of the embedded server on 127.0.0.1 (0: any free port)."""
    embedded_store: Path = Path(".edgehub/hub/nats")
    advertise: list[str] = []
    """NATS URLs handed to devices at enrollment (default: the url, or the embedded server's)."""


class HubSection(_Section):
    id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    """This process's name in leases and logs (several hub processes may run at once)."""


class MetricsConfig(_Section):
    port: int | None = Field(None, ge=0, le=65535)
    """Serve Prometheus metrics on this port (0: any free port); None: off."""
    addr: str = "127.0.0.1"


class ApiConfig(_Section):
    addr: str = "127.0.0.1:7443"
    """gRPC management API address for operators and enrollment (port 0: any free port); always TLS."""
    device_addr: str = "127.0.0.1:7444"
    """The same API for enrolled devices: mutual TLS, client certificates from the hub's CA."""
    tls_names: list[str] = Field(default_factory=lambda: ["localhost", "127.0.0.1", socket.gethostname()])
    """Host names and IPs in the API's server certificate (what clients dial)."""


class AuthConfig(_Section):
    dir: Path = Path(".edgehub/hub/trust")
    """The hub's trust folder (0700): NATS operator/account keys, the API's CA, the first admin token.
    Every hub process of a deployment uses the same one (a shared secret volume in production)."""


class Neo4jConfig(_Section):
    """The L4 knowledge graph's Neo4j. Defaults come from the standard NEO4J_URI, NEO4J_USER and
    NEO4J_PASSWORD variables; the TOML file and EDGEHUB_HUB__NEO4J__* override them."""

    enabled: bool = True
    """Keep the L4 knowledge graph; false: the hub runs without one (tests and benches that need none)."""
    uri: str | None = Field(default_factory=lambda: os.environ.get("NEO4J_URI") or None)
    """The operator's Neo4j (``neo4j://`` or ``bolt://``); None: start the embedded Neo4j Community
    launcher on 127.0.0.1 (built by make setup)."""
    user: str = Field(default_factory=lambda: os.environ.get("NEO4J_USER") or "neo4j")
    password: str | None = Field(default_factory=lambda: os.environ.get("NEO4J_PASSWORD") or None, repr=False)
    """Required with a uri; embedded with None: a random password each start."""
    database: str = "neo4j"
    embedded_port: int = Field(0, ge=0, le=65535)
    """Bolt port of the embedded server on 127.0.0.1 (0: any free port)."""
    embedded_data: Path = Path(".edgehub/hub/neo4j")
    embedded_heap_mb: int = Field(512, ge=128)
    embedded_pagecache_mb: int = Field(128, ge=8)
    launcher_dir: Path | None = None
    """Where make setup built the launcher (None: $EDGEHUB_CACHE/neo4j)."""


class HubConfig(_Section):
    hub: HubSection = HubSection()
    nats: NatsConfig = NatsConfig()
    metrics: MetricsConfig = MetricsConfig()
    api: ApiConfig = ApiConfig()
    auth: AuthConfig = AuthConfig()
    neo4j: Neo4jConfig = Field(default_factory=Neo4jConfig)


def _env(env: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, value in env.items():
        if name.startswith(ENV_PREFIX):
            *parents, leaf = (p.lower() for p in name[len(ENV_PREFIX) :].split("__"))
            node = tree
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = json.loads(value) if value[:1] in "[{" else value
    return tree


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None) -> HubConfig:
    """Load ``path`` (optional) then environment overrides; HubConfigError names the bad key."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise HubConfigError(f"{path}: file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise HubConfigError(f"{path}: not valid TOML: {exc}") from None
    for section, values in _env(os.environ if env is None else env).items():
        data.setdefault(section, {}).update(values)
    try:
        return HubConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise HubConfigError(f"{key}: {err['msg']}") from None
