"""Hub daemon configuration: TOML, then ``EDGEHUB_HUB__<SECTION>__<KEY>`` environment overrides."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgehub.cli import config as config_loader
from edgehub.llm import LlamaSettings, packaged_model_path
from edgehub.llm.settings import HUB_MODEL_NAME
from edgehub.protocol.ids import NAME_PATTERN
from edgehub.sync.otlp import check_otlp_endpoint
from edgehub.sync.streams import StreamLimits
from edgehub.sync.tls import is_loopback

from .errors import HubConfigError

ENV_PREFIX = "EDGEHUB_HUB__"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NatsConfig(_Section):
    url: str | None = None
    """An existing NATS cluster (production); None: start an embedded nats-server."""
    embedded_port: int = Field(4222, ge=0, le=65535)
    """Port of the embedded server (0: any free port)."""
    embedded_host: str = "127.0.0.1"
    """Address the embedded server listens on: loopback serves edges on this machine only; a LAN
    address (or 0.0.0.0) serves devices on the network (they authenticate with their credentials)."""
    embedded_store: Path = Path(".edgehub/hub/nats")
    advertise: list[str] = []
    """NATS URLs handed to devices at enrollment (default: the url, or the embedded server's)."""
    leaf_port: int = Field(0, ge=0, le=65535)
    """Leafnode listener of the embedded server, for NATS leaf nodes on site gateways (the
    ``edgehub_nats_leaf`` Ansible role; ``edgehub hub leaf-config`` gives what a leaf needs); 0: off."""
    leaf_host: str | None = None
    """Address the leafnode listener binds (None: ``embedded_host``)."""
    tls: bool | None = None
    """TLS on the embedded server's client and leafnode listeners (handshake first, a certificate
    from the hub's CA, which devices get at enrollment); None: on for a listener bound to anything
    but loopback, off on loopback."""
    allow_plaintext: bool = False
    """Allow plaintext NATS off loopback: ``tls = false`` on a LAN listener, or a ``nats://`` url to
    another machine. Only for a network you trust entirely: credentials, commands and mind-logs
    cross it in clear."""
    tls_names: list[str] = Field(default_factory=lambda: ["localhost", "127.0.0.1", socket.gethostname()])
    """Host names and IPs in the embedded server's certificate, besides its listen addresses and the
    advertised URLs' hosts."""
    tls_cert_days: float = Field(30.0, gt=0, le=825)
    """Lifetime of the embedded server's certificate; the running hub renews it when a third is left
    (clients stay connected)."""
    ca_file: Path | None = None
    """With a ``tls://`` url: the CA (PEM bundle) of that cluster's certificates, handed to devices at
    enrollment; None: the hub's own CA."""

    @model_validator(mode="after")
    def _leaf_needs_embedded(self) -> NatsConfig:
        if self.leaf_port and self.url:
            raise ValueError("leaf_port is for the embedded server: with a url, configure leafnodes there")
        return self

    @model_validator(mode="after")
    def _advertise_matches(self) -> NatsConfig:
        scheme = "tls" if self.client_tls else "nats"
        if not self.url and (wrong := [u for u in self.advertise if urlsplit(u).scheme != scheme]):
            raise ValueError(f"advertise: the embedded server takes {scheme}:// (tls = {self.client_tls}); "
                             f"not {', '.join(wrong)}")  # fmt: skip
        return self

    @model_validator(mode="after")
    def _no_plaintext_off_loopback(self) -> NatsConfig:
        if self.allow_plaintext:
            return self
        listeners = [("embedded_host", self.embedded_host, self.client_tls)] if not self.url else []
        if self.leaf_port:
            listeners.append(("leaf_host", self.leaf_host or self.embedded_host, self.leaf_tls))
        for key, host, tls in listeners:
            if not tls and not is_loopback(host):
                raise ValueError(
                    f"tls = false with {key} = {host!r} (not loopback) would carry credentials and "
                    "commands in clear: turn TLS on, or set allow_plaintext = true"
                )
        urls = [*([self.url] if self.url else []), *self.advertise]
        remote = [u for u in urls if u.startswith("nats://") and not is_loopback(urlsplit(u).hostname or "")]
        if remote:
            raise ValueError(f"plaintext NATS URL off loopback ({', '.join(remote)}): use tls://, or set "
                             "allow_plaintext = true")  # fmt: skip
        return self

    @property
    def client_tls(self) -> bool:
        """The embedded server's client listener takes TLS only."""
        return self.tls if self.tls is not None else not is_loopback(self.embedded_host)

    @property
    def leaf_tls(self) -> bool:
        """The embedded server's leafnode listener takes TLS only."""
        return self.tls if self.tls is not None else not is_loopback(self.leaf_host or self.embedded_host)

    def server_names(self) -> list[str]:
        """What the embedded server's certificate names: ``tls_names``, the listen addresses (not a
        wildcard) and the advertised URLs' hosts."""
        hosts = [
            self.embedded_host,
            self.leaf_host or "",
            *(urlsplit(u).hostname or "" for u in self.advertise),
        ]
        names = [*self.tls_names, *(h for h in hosts if h and h not in ("0.0.0.0", "::"))]
        return list(dict.fromkeys(names))


class HubSection(_Section):
    id: str = Field(
        default_factory=lambda: f"{socket.gethostname()[:50]}-{os.getpid()}", pattern=NAME_PATTERN
    )
    """This process's name in leases and logs (several hub processes may run at once)."""
    events_batch: int = Field(1024, ge=1, le=10_000)
    """Events pulled and applied per batch: larger batches replay faster (one registry write per
    agent per batch), smaller ones bound the memory and the work redone after a crash."""


class MetricsConfig(_Section):
    port: int | None = Field(None, ge=0, le=65535)
    """Serve Prometheus metrics on this port (0: any free port); None: off."""
    addr: str = "127.0.0.1"


class TracingConfig(_Section):
    """The hub's traces (``edgehub.hub.tracing``): goals, their tasks, the API's calls, applied events."""

    otlp_endpoint: str | None = None
    """OTLP/gRPC collector (``http://127.0.0.1:4317``; ``https://`` for TLS); None: off, at no cost.
    The standard ``OTEL_EXPORTER_OTLP_*`` variables (headers, certificates, timeout) still apply."""
    service_name: str = Field("edgehub-hub", min_length=1)
    """``service.name`` of the traces (the hub process's id is ``service.instance.id``)."""
    sample_ratio: float = Field(1.0, ge=0.0, le=1.0)
    """Fraction of goals traced; a goal's tasks, agents and steps are kept or dropped with it (edges
    follow the hub's decision)."""

    @field_validator("otlp_endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return check_otlp_endpoint(value)


class ApiConfig(_Section):
    addr: str = "127.0.0.1:7443"
    """gRPC management API address for operators and enrollment (port 0: any free port); always TLS."""
    device_addr: str = "127.0.0.1:7444"
    """The same API for enrolled devices: mutual TLS, client certificates from the hub's CA."""
    tls_names: list[str] = Field(default_factory=lambda: ["localhost", "127.0.0.1", socket.gethostname()])
    """Host names and IPs in the API's server certificate (what clients dial)."""


class AuthConfig(_Section):
    dir: Path = Path(".edgehub/hub/trust")
    """The hub's trust folder (0700): NATS operator/account keys, the API's CA, the key approval decisions
    are signed with, the first admin token. Every hub process of a deployment uses the same one (a
    shared secret volume in production)."""
    decision_ttl_s: float = Field(86400.0, gt=0, le=14 * 86400)
    """How long a device may apply an approval decision the hub signed (``DecideApproval``): a device
    offline longer leaves the call pending, for an operator to decide again."""


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


class HubModelConfig(_Section):
    """The hub's own llama.cpp model (the same brain code as the edges'), for a part that writes with
    it: consolidation, planning. Each part loads its own when it first needs it."""

    model_path: Path | None = None
    """GGUF file; None: the Gemma 3 270M package's model (``HUB_MODEL_NAME``; a larger GGUF writes
    better facts and plans on a real hub)."""
    n_ctx: int = Field(2048, ge=512, le=131072)
    n_threads: int | None = Field(None, ge=1, le=256)
    """None: one per available core."""
    n_batch: int = Field(64, ge=8, le=4096)

    def llama_settings(self, section: str) -> LlamaSettings:
        """How to load it; ``section`` names the setting in "not found" errors."""
        return LlamaSettings(
            path=self.model_path or packaged_model_path(HUB_MODEL_NAME),
            n_ctx=self.n_ctx,
            n_threads=self.n_threads,
            n_batch=self.n_batch,
            path_key=f"{section}.model_path",
        )


class DreamerConfig(HubModelConfig):
    """Consolidation ("dreamer"): clusters of L3 episodes from the edges become L4 facts, written by the
    hub's own model (the same llama.cpp brain as the edges'); the edges then prune what was abstracted.
    Needs the knowledge graph (``[neo4j]``)."""

    enabled: bool = True
    interval_s: float = Field(3600.0, ge=0)
    """Run this often (the first run one interval after start); 0: only on demand (API/CLI)."""
    similarity: float = Field(0.5, gt=0.0, le=1.0)
    """Cosine similarity (MiniLM embeddings) at which two episodes are about the same thing."""
    min_cluster: int = Field(2, ge=1, le=64)
    """Episodes a cluster needs before it is abstracted (1: single episodes too)."""
    max_cluster: int = Field(8, ge=1, le=64)
    """At most this many episodes per cluster (they share the model's context)."""
    batch: int = Field(1000, ge=1, le=10_000)
    """Pending episodes one run takes (oldest first)."""
    max_facts: int = Field(5, ge=1, le=8)
    """Facts kept per cluster."""
    max_tokens: int = Field(256, ge=32, le=2048)
    """Tokens the model may write per cluster."""
    settle_after_days: float = Field(7.0, gt=0)
    """An episode with no similar one for this long stops waiting for a cluster (it stays in L3)."""
    prune: bool = True
    """Send each edge a PruneEpisodes command for its episodes a run consolidated."""

    @model_validator(mode="after")
    def _cluster_bounds(self) -> DreamerConfig:
        if self.max_cluster < self.min_cluster:
            raise ValueError(f"max_cluster ({self.max_cluster}) is below min_cluster ({self.min_cluster})")
        return self


class PlannerConfig(HubModelConfig):
    """Multi-agent planning: goals become DAGs of tasks, written by the hub's own model (the same
    llama.cpp brain as the edges', grammar-constrained JSON), dispatched to devices by capability and
    load, joined, retried, re-planned. Loads its model at the first goal that needs it."""

    enabled: bool = True
    n_ctx: int = Field(4096, ge=512, le=131072)
    """The prompt lists the fleet's tools and an example; drafts can be long."""
    max_tokens: int = Field(768, ge=64, le=8192)
    """Tokens the model may write per draft."""
    attempts: int = Field(3, ge=1, le=10)
    """Drafts per plan: a rejected one is asked for again with the reason."""
    max_tasks: int = Field(12, ge=1, le=32)
    max_depth: int = Field(5, ge=1, le=32)
    """Levels of one plan (the longest chain of tasks each needing the one before)."""
    max_goal_depth: int = Field(2, ge=0, le=8)
    """Sub-planner nesting: a task may be a goal of its own this many levels down (0: never)."""
    task_tokens: int = Field(20_000, ge=100)
    """One task's token budget (its agent's max_tokens) and the most one estimate may say."""
    max_tokens_per_goal: int = Field(100_000, ge=100)
    """A goal's token budget when it sets none."""
    max_wall_seconds: float = Field(3600.0, gt=0)
    """A goal's wall-time budget when it sets none."""
    max_tool_calls: int = Field(200, ge=1)
    """A goal's tool-call budget when it sets none."""
    task_tool_calls: int = Field(50, ge=1)
    """One task's tool calls (its agent's max_tool_calls)."""
    max_retries: int = Field(2, ge=0, le=20)
    """Attempts of a failed or lost task after its first (on another device when there is one)."""
    retry_backoff_s: float = Field(2.0, ge=0)
    """Wait before a retry, doubled each time."""
    max_replans: int = Field(1, ge=0, le=10)
    """Re-plans of a goal whose task failed every attempt (the model plans the rest again)."""
    approve_tools: list[str] = []
    """Tasks needing any of these tools wait for an operator's approval ("*": every task)."""
    keep_ended_days: float = Field(30.0, gt=0)
    """Records of goals that ended (done, failed, cancelled) are deleted this long after."""
    tick_s: float = Field(1.0, gt=0, le=60)
    """How often running goals are looked at (results also advance a goal at once)."""
    synthesise: bool = True
    """When a plan ends in several tasks, the model writes the goal's answer from their results (off:
    their answers, joined, are the goal's)."""
    synthesis_tokens: int = Field(384, ge=128, le=2048)
    """Tokens the model may write for a goal's answer (which is then at most this many characters less
    100, so its JSON closes)."""


class EscalationConfig(_Section):
    """Answers the edges' escalated steps (``EscalateRequest`` on ``edgehub.esc.<device>``) with the
    hub's model: the planner's (``[planner]`` model settings), one copy shared behind one gate."""

    enabled: bool = True
    queue_per_device: int = Field(4, ge=1, le=1024)
    """Requests one device may have waiting; another is answered "busy" at once."""
    queue_total: int = Field(256, ge=1, le=100_000)
    """Requests waiting from all devices together; beyond: "busy"."""
    max_prompt_chars: int = Field(32_000, ge=256)
    """A longer prompt is refused ("too large")."""
    max_schema_chars: int = Field(32_000, ge=256)
    max_tokens: int = Field(512, ge=16, le=8192)
    """The most tokens one request may ask the model to write."""
    default_deadline_ms: int = Field(10_000, ge=100)
    """A request that gives no deadline gets this one."""
    cache_entries: int = Field(1024, ge=0)
    """Answers kept (LRU by context key: prompt, schema, max_tokens, this hub's model); 0: no cache."""


MB = 1024 * 1024


class RetentionConfig(_Section):
    """How long the hub keeps what it stores in JetStream, and how much (docs/operations.md, "Retention
    on the hub"). No event is dropped before it is applied: see ``edgehub.sync.streams``."""

    events_days: float = Field(30.0, gt=0)
    """Applied events (the agents' mind-logs, what ``agent trace`` reads) are purged this long after
    they reached the hub; an event not applied yet is kept, however old."""
    events_max_mb: int = Field(4096, ge=1)
    """The events stream's size: at it, edges' publishes are refused (they keep the events in their
    outbox and retry), never old events dropped."""
    commands_days: float = Field(7.0, gt=0)
    """Commands to devices are deleted this long after they were sent (a device offline longer misses
    them)."""
    commands_max_mb: int = Field(256, ge=1)
    """The commands stream's size: at it, new commands are refused."""
    migrations_days: float = Field(30.0, gt=0)
    """Ended migrations (done, failed, rolled back) and their handover state are deleted this long after
    they ended. (Ended goals: ``[planner] keep_ended_days``.)"""
    alarm_ratio: float = Field(0.8, gt=0, le=1)
    """A stream this full (of its max bytes) is logged as a warning and shown in
    ``edgehub_hub_stream_fill_ratio``, before it refuses publishes."""
    interval_s: float = Field(300.0, gt=0)
    """How often the hub process holding the ``retention`` lease purges and prunes."""
    jetstream_max_store_mb: int | None = Field(None, ge=1)
    """The embedded nats-server's file store limit (``max_file_store``); None: the disk's. Past it
    every publish is refused with "insufficient resources"."""

    @model_validator(mode="after")
    def _streams_fit_the_store(self) -> RetentionConfig:
        streams = self.events_max_mb + self.commands_max_mb
        if self.jetstream_max_store_mb is not None and streams >= self.jetstream_max_store_mb:
            raise ValueError(
                f"events_max_mb + commands_max_mb ({streams}) must stay below jetstream_max_store_mb "
                f"({self.jetstream_max_store_mb}): the buckets need room too"
            )
        return self

    def stream_limits(self) -> StreamLimits:
        """The limits ``ensure_topology`` sets on the streams."""
        return StreamLimits(
            events_max_bytes=self.events_max_mb * MB,
            commands_max_bytes=self.commands_max_mb * MB,
            commands_max_age_s=self.commands_days * 86400,
        )


class RolloutsConfig(_Section):
    """Parity-gated model rollouts (``fleet/rollouts.py``, docs/models.md)."""

    wave_timeout_s: float = Field(86400.0, gt=0)
    """A wave in shadow that has not filled its window after this long is halted (its devices sent too
    few shadow steps: they refused the model, ran no agents, or are offline)."""
    check_s: float = Field(30.0, gt=0)
    """How often the hub looks for waves past their timeout."""


class HubConfig(_Section):
    hub: HubSection = HubSection()
    nats: NatsConfig = NatsConfig()
    metrics: MetricsConfig = MetricsConfig()
    api: ApiConfig = ApiConfig()
    auth: AuthConfig = AuthConfig()
    neo4j: Neo4jConfig = Field(default_factory=Neo4jConfig)
    dreamer: DreamerConfig = DreamerConfig()
    planner: PlannerConfig = PlannerConfig()
    escalation: EscalationConfig = EscalationConfig()
    tracing: TracingConfig = TracingConfig()
    retention: RetentionConfig = RetentionConfig()
    rollouts: RolloutsConfig = RolloutsConfig()


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None) -> HubConfig:
    """Load ``path`` (optional) then environment overrides (``edgehub.cli.config``); HubConfigError
    names the bad key."""
    return config_loader.load_config(HubConfig, path, prefix=ENV_PREFIX, error=HubConfigError, env=env)
