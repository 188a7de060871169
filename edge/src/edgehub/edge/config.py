"""Edge daemon configuration: a typed tree loaded from TOML, then environment overrides.

Environment variables override file values with ``EDGEHUB_EDGE__<SECTION>__<KEY>`` (double
underscores separate levels), e.g. ``EDGEHUB_EDGE__MODEL__N_THREADS=4``; lists as JSON
(``EDGEHUB_EDGE__TOOLS__ENABLED='["read_file", "finish"]'``). Unknown keys are errors,
so a typo never silently falls back to a default. Nothing here reads global state: the caller passes
the loaded config to the components that need it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgehub.cli import config as config_loader
from edgehub.protocol.ids import NAME_PATTERN
from edgehub.sync.otlp import check_otlp_endpoint

from .errors import ConfigError
from .triggerspec import Trigger, check_unique

ENV_PREFIX = "EDGEHUB_EDGE__"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceConfig(_Section):
    id: str = Field("local", pattern=NAME_PATTERN)
    """Device identity (assigned at enrollment once the hub issue lands)."""
    data_dir: Path = Path(".edgehub/edge")
    """Where the store, agent workspaces and snapshots live."""
    labels: dict[str, str] = {}
    """Reported to the hub in the twin (e.g. ``site = "plant-3"``): the planner's affinity selectors."""
    apply_profile: bool = True
    """Settings this config leaves unset come from the detected hardware profile (``edgehub hardware
    detect``: threads, context size, batch, sandbox limits, snapshot folder); false: built-in defaults."""


class ModelConfig(_Section):
    path: Path | None = None
    """GGUF file; default: the default model (``edgehub.llm.settings.DEFAULT_MODEL_NAME``)."""
    n_ctx: int = Field(2048, ge=256, le=131072)
    n_threads: int | None = Field(None, ge=1, le=256)
    """None: one per available core."""
    n_batch: int = Field(64, ge=8, le=4096)
    """Small on purpose: llama.cpp keeps n_batch x vocab logits (Gemma's vocab is 262k)."""
    seed: int = 0
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    """0 = greedy: reproducible steps."""
    max_action_tokens: int = Field(192, ge=16, le=4096)
    strict_strings: bool = True
    """The action grammar admits in JSON strings only what JSON allows (no raw control characters)."""
    grammar_bounds: int = Field(200, ge=0, le=1000)
    """Length bounds of the action schema up to this many characters stay in the grammar (the thought,
    paths, keys: a model cannot ramble inside them until max_tokens cuts its JSON); 0: none."""


class ShadowConfig(_Section):
    """Shadow reasoning for parity-gated rollouts (``shadow.py``, docs/models.md)."""

    timeout_s: float = Field(60.0, gt=0)
    """A shadow proposal not ready after this long is dropped (counted); the next steps are skipped
    until the model is free again."""
    n_threads: int | None = Field(None, ge=1, le=256)
    """Threads of the shadow model; None: ``[model] n_threads``'s."""


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
    recall_tokens: int = Field(120, ge=0)
    """Room in the prompt's task block for L3 memories of earlier agents that bear on the goal
    (recalled at the start and at each compaction; ``[memory] episodic`` on); 0: none."""
    recall_style: Literal["distilled", "raw"] = "distilled"
    """What the prompt recalls: ``distilled``, what earlier agents learned (remembered facts, verified
    results; never their action lines); ``raw``, any episode, actions included (as before issue 18)."""
    prompt_format: Literal["auto", "transcript"] = "auto"
    """``auto``: the model's own chat template when its GGUF has one (instruction-tuned models), else
    the transcript; ``transcript``: always the transcript (what a base model continues)."""
    demonstrations: Literal["chosen", "fixed"] = "chosen"
    """Worked examples in the prompt: ``chosen`` for the goal from a library (``agent/demos.toml``);
    ``fixed``: the same two for every goal."""
    demonstration_tokens: int = Field(420, ge=0)
    """Room for chosen demonstrations in the prompt's header (at least one is always shown)."""
    plan: bool = True
    """The agent writes a short step plan with its first action, and again when sent back or warned;
    the plan is kept in its state and shown in the trace."""
    finish_check: bool = True
    """Before an agent may finish, its record is checked against the deliverables the platform
    extracted from the goal; when some are missing it is sent back with what is missing."""
    guide: bool = True
    """Each step's grammar calls the tool of the goal's next unmet deliverable, with the file or command
    the goal spells out, and ``finish`` once the work is done; the model still writes the thought, the
    file's text and the answer. Goals the platform reads no deliverables from are not guided."""
    finish_returns: int = Field(2, ge=0, le=8)
    """How often the finish check sends an agent back before letting it finish unverified."""


class MemoryConfig(_Section):
    episodic: bool = True
    """L3: embed each step into sqlite-vec and let ``recall`` find earlier steps by meaning."""
    half_life_days: float = Field(7.0, gt=0)
    """Recall weighs a memory this old half as much as a new one (similarity and importance equal)."""
    replicate: bool = True
    """Send each new episode (PII-masked, with its embedding) to the hub, whose consolidation turns the
    fleet's episodes into L4 facts."""
    keep_consolidated_days: float = Field(7.0, ge=0)
    """Keep an episode this long after the hub consolidated it (recall skips it meanwhile); 0: delete
    at once."""


class ToolsConfig(_Section):
    enabled: list[str] | None = None
    """Tool names offered to agents; None: every registered tool."""
    load_entry_points: bool = True
    """Load third-party tools from the ``edgehub.tools`` entry point group."""
    command_timeout_s: float = Field(20.0, gt=0)


class SandboxConfig(_Section):
    mode: Literal["bwrap", "off"] = "bwrap"
    """``bwrap``: every command in a bubblewrap sandbox. ``off``: no sandbox (development only)."""
    memory_mb: int = Field(256, ge=16)
    max_pids: int = Field(64, ge=4)
    cpu_seconds: int = Field(10, ge=1)
    file_mb: int = Field(64, ge=1)
    """Largest file a command may write."""
    cgroups: bool = True
    """Enforce memory and process limits with a per-call cgroup (else rlimits only)."""
    hide: list[Path] = []
    """Extra paths covered with an empty tmpfs inside the sandbox."""
    ro_binds: list[Path] = []
    """Extra host paths visible read-only (e.g. a toolchain under /opt)."""


class SafetyConfig(_Section):
    policy: Path | None = None
    """Policy file (TOML); None: the built-in default policy. Edits apply without a restart. A policy
    bundle the hub pushed, once accepted, is in force instead (``fleet_policy``)."""
    fleet_policy: bool = True
    """Take policy bundles the hub signed (``edgehub policy push``): the latest accepted is kept under
    ``<data_dir>/policy`` and wins over ``policy``. False: this device refuses them (and reports so)
    and ignores the one it kept: the way back to local-only."""
    rate_per_minute: float | None = Field(120.0, gt=0)
    """Calls per minute per tool on this device; None: unlimited."""
    tool_rate_per_minute: dict[str, float] = {}
    """Per-tool overrides of ``rate_per_minute``."""
    breaker_failures: int = Field(5, ge=1)
    """Consecutive tool failures that open its circuit breaker."""
    breaker_reset_s: float = Field(30.0, gt=0)
    """How long an open breaker refuses calls before letting one through (half-open)."""
    stuck_similarity: float = Field(0.95, gt=0, le=1)
    stuck_steps: int = Field(5, ge=2)
    """Near-identical consecutive thoughts that count as stuck."""
    failing_repeats: int = Field(3, ge=2)
    """The same failing call this many times in a row counts as stuck."""
    same_calls: int = Field(4, ge=2)
    """The same call (tool and arguments) succeeding this many times in an agent's life counts as stuck;
    a repeat of a call whose tool is not repeatable (commands, notes) is refused at once, and counts as
    stuck the first time."""
    refuse_repeats: bool = True
    """Refuse a repeat of a call whose tool is not repeatable (commands, notes, moves) before it runs;
    false: such a repeat runs like any other call, and only ``same_calls`` counts it (measured on and off
    in docs/benchmarks.md)."""
    stuck_warnings: int = Field(1, ge=0)
    """Re-plan warnings before a stuck agent is stopped."""
    pii_masking: bool = True
    """Mask PII in everything that leaves the device (the outbox)."""
    phone_region: str = Field("US", pattern=r"^[A-Z]{2}$")
    """Region for phone numbers written without a country code."""
    local_approvals: Literal["unenrolled", "on", "off"] = "unenrolled"
    """Whether ``edgehub approvals decide`` on the device decides (recorded as ``local:<OS user>``):
    ``unenrolled``, only while the device is not enrolled with a hub (an enrolled device takes only
    decisions the hub signed, in the name of the API token that made them); ``on``, also when enrolled
    (offline sites); ``off``, never."""


class HubLinkConfig(_Section):
    nats_url: str | None = None
    """NATS server or cluster of the hub (``tls://host:4222``); None: the URLs enrollment gave, and
    with no enrollment either, offline (the outbox keeps growing)."""
    ca_file: Path | None = None
    """CA (PEM) that verifies a ``tls://`` server; None: the one enrollment gave."""
    allow_plaintext: bool = False
    """Allow a ``nats://`` (plaintext) URL to another machine: only on a network you trust entirely
    (credentials, commands and mind-logs cross it in clear). Loopback needs no permission."""
    outbox_alarm: int = Field(100_000, ge=1)
    """Undelivered events above which the daemon raises an alarm (it never drops them)."""
    publish_batch: int = Field(256, ge=1, le=10_000)
    """Outbox entries in flight at once."""
    heartbeat_s: float = Field(5.0, gt=0)
    """How often the device reports its twin (version, hardware, load, agents) to the hub."""
    knowledge_timeout_s: float = Field(3.0, gt=0, le=60)
    """The ``knowledge`` tool waits this long for the hub before it answers "hub unreachable"."""
    knowledge_cache_s: float = Field(300.0, ge=0)
    """Reuse the hub's answer to the same question for this long without asking again (offline, the
    last answer of any age is used, marked with its age)."""


class EscalationConfig(_Section):
    """Escalation: a step the device's model is unsure of is asked of the hub's model (over the hub
    link, with the device's credentials); its answer is the step's action. docs/models.md, "Escalation"."""

    enabled: bool = False
    min_confidence: float = Field(0.02, ge=0.0, le=1.0)
    """Escalate a step whose confidence (``Completion.confidence``: the probability the model gave the
    first token of its ``"tool"`` value that spells part of the name, before the grammar's mask) is
    below this; 0: never for confidence. Set it per model (docs/models.md, "Escalation")."""
    on_stuck: bool = True
    """Escalate the step after the stuck monitor warned the agent (before it would stop it)."""
    timeout_s: float = Field(10.0, gt=0, le=300)
    """Wait this long for the hub's answer; then the device's own action stands."""
    max_tokens_share: float = Field(0.5, ge=0.0, le=1.0)
    """Of an agent's token budget, at most this share may be spent by the hub's model; a step that
    could go beyond is not escalated."""
    cache_entries: int = Field(256, ge=0)
    """Answers kept in memory (LRU by prompt, schema, max_tokens and the hub's model); 0: none."""


class MetricsConfig(_Section):
    port: int | None = Field(None, ge=0, le=65535)
    """Serve Prometheus metrics on this port (0: any free port); None: off."""
    addr: str = "127.0.0.1"


class TracingConfig(_Section):
    otlp_endpoint: str | None = None
    """OTLP/gRPC collector for traces of agent runs and steps (``http://127.0.0.1:4317``; ``https://``
    for TLS); None: off, at no cost. The standard ``OTEL_EXPORTER_OTLP_*`` variables (headers,
    certificates, timeout, compression) still apply."""
    service_name: str = Field("edgehub-edge", min_length=1)
    """``service.name`` of the traces (the device id is ``device.id``)."""
    sample_ratio: float = Field(1.0, ge=0.0, le=1.0)
    """Fraction of agent runs traced; a run's steps are kept or dropped together. The runs of an agent
    the hub started follow the hub's decision for its goal instead (parent-based sampling)."""

    @field_validator("otlp_endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return check_otlp_endpoint(value)


class SnapshotConfig(_Section):
    enabled: bool = False
    """Run the model in a worker process that CRIU checkpoints when idle and restores on the next call
    (docs/wake.md). Off by default: it needs root (or CAP_CHECKPOINT_RESTORE) and a CRIU that passes
    ``criu check`` (``edgehub edge doctor`` says whether this device has both); without them every wake
    is a cold start, so turning it on where they are missing costs a process and gains nothing."""
    dir: Path | None = None
    """Image folder; None: ``<data_dir>/snapshots``. Set, the device keeps its images in a subfolder named
    by its id (``<dir>/<device id>``: daemons sharing one folder stay apart). A tmpfs
    (``/dev/shm/edgehub``) restores fastest, but the image then stays in RAM (about 100 MB for the
    default model)."""
    idle_s: float = Field(60.0, gt=0)
    """Checkpoint the worker once no agent has called the model for this long."""
    criu: Path | None = None
    """CRIU binary; None: the one bootstrap links beside the venv's Python, else ``criu`` on PATH."""


class StoreConfig(_Section):
    checkpoint_s: float = Field(10.0, gt=0)
    """Copy the store's write-ahead log into the database this often (passive: never waits for a
    reader), besides SQLite's own checkpoint at 1 MB of log: committed steps do not stay for long
    only in ``edge.db-wal`` (docs/architecture.md, Durability of the store)."""
    resume_free_mb: float = Field(2.0, gt=0)
    """After the store's file system filled up (agents paused, docs/operations.md "Disk pressure"),
    they resume once this much is free again."""
    pause_free_mb: float = Field(0.0, ge=0)
    """Pause the running agents at their next step once less than this is free on the store's file
    system, before a write fails (0: only when one does). Must be below ``resume_free_mb``."""

    @model_validator(mode="after")
    def _pause_below_resume(self) -> StoreConfig:
        if self.pause_free_mb and self.pause_free_mb >= self.resume_free_mb:
            raise ValueError(
                f"pause_free_mb ({self.pause_free_mb:g}) must be below resume_free_mb "
                f"({self.resume_free_mb:g}), or agents would resume only to pause again"
            )
        return self


class KindRetention(_Section):
    """How much of one kind of data the store keeps. A row goes once it is older than ``max_age_days``
    OR beyond the newest ``max_rows`` OR beyond the newest ``max_mb``, and only when nothing still
    needs it (docs/operations.md, Retention on the edge); unset: no limit of that sort."""

    max_age_days: float | None = Field(None, gt=0)
    max_rows: int | None = Field(None, ge=1)
    max_mb: float | None = Field(None, gt=0)
    """None: this kind's share of ``[retention] budget_mb``."""


RETENTION_SHARES = {"outbox": 0.2, "mind_log": 0.4, "agents": 0.1, "intents": 0.1, "episodes": 0.2}
"""Each kind's share of ``[retention] budget_mb`` when it sets no ``max_mb`` of its own."""


class RetentionConfig(_Section):
    """What the store keeps of the device's history, per kind; the daemon prunes the rest every
    ``interval_s`` in small transactions and gives the space back to the file system."""

    enabled: bool = True
    """False: nothing is pruned (the store grows without bound)."""
    interval_s: float = Field(60.0, gt=0)
    """How often the daemon prunes."""
    batch_rows: int = Field(500, ge=1, le=100_000)
    """Rows deleted per transaction: a step waits for at most one batch."""
    vacuum_pages: int = Field(1024, ge=0)
    """Free pages given back to the file system per ``incremental_vacuum`` call after pruning (4 KB
    each); 0: none (freed pages are only reused)."""
    budget_mb: int = Field(1024, ge=16)
    """What the kinds that set no ``max_mb`` share (``RETENTION_SHARES``); from the hardware profile."""
    outbox: KindRetention = KindRetention(max_age_days=2)
    """Outbox rows the hub acknowledged."""
    mind_log: KindRetention = KindRetention(max_age_days=7)
    """Mind-log events and L2 turns of ended agents, counted from the agent's end."""
    agents: KindRetention = KindRetention(max_age_days=30)
    """Ended agents (finished, failed, stopped, migrated away), with all they left behind."""
    intents: KindRetention = KindRetention(max_age_days=7)
    """Tool intents of agents that are no longer active."""
    episodes: KindRetention = KindRetention(max_age_days=90)
    """L3 episodes, beyond ``[memory] keep_consolidated_days`` (which prunes those the hub consolidated)."""
    triggers: KindRetention = KindRetention(max_age_days=30, max_rows=100_000, max_mb=16)
    """The record of trigger events: which event started which agent, or why none (a limit of its own,
    outside ``budget_mb``'s shares)."""

    def max_bytes(self, kind: str) -> int:
        """The byte limit of ``kind``: its own ``max_mb`` or its share of ``budget_mb``."""
        own: KindRetention = getattr(self, kind)
        mb = own.max_mb if own.max_mb is not None else self.budget_mb * RETENTION_SHARES[kind]
        return int(mb * 1024 * 1024)


class EdgeConfig(_Section):
    device: DeviceConfig = DeviceConfig()
    model: ModelConfig = ModelConfig()
    shadow: ShadowConfig = ShadowConfig()
    agent: AgentConfig = AgentConfig()
    memory: MemoryConfig = MemoryConfig()
    tools: ToolsConfig = ToolsConfig()
    sandbox: SandboxConfig = SandboxConfig()
    safety: SafetyConfig = SafetyConfig()
    hub: HubLinkConfig = HubLinkConfig()
    escalation: EscalationConfig = EscalationConfig()
    metrics: MetricsConfig = MetricsConfig()
    tracing: TracingConfig = TracingConfig()
    snapshot: SnapshotConfig = SnapshotConfig()
    store: StoreConfig = StoreConfig()
    retention: RetentionConfig = RetentionConfig()
    triggers: list[Trigger] = []
    """Goals started by the site (``[[triggers]]``, docs/triggers.md): schedules, MQTT, Modbus, NATS,
    webhooks."""

    @field_validator("triggers")
    @classmethod
    def _unique_triggers(cls, value: list[Trigger]) -> list[Trigger]:
        return check_unique(value)

    @property
    def store_path(self) -> Path:
        return self.device.data_dir / "edge.db"

    @property
    def workspaces(self) -> Path:
        return self.device.data_dir / "workspaces"

    @property
    def identity_dir(self) -> Path:
        """Credentials from enrollment (``edgehub edge enroll``)."""
        return self.device.data_dir / "identity"

    @property
    def vault_key_path(self) -> Path:
        return self.device.data_dir / "vault.key"


def load_config(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    *,
    profile: Mapping[str, Any] | None = None,
) -> EdgeConfig:
    """Load ``path`` (optional) and apply ``env`` overrides (``edgehub.cli.config``); raise ConfigError
    naming the bad key. ``profile`` (the hardware profile's settings, ``Settings.as_edge_config()``)
    fills what neither sets, unless ``[device] apply_profile = false``."""

    def under(data: Mapping[str, Any]) -> Mapping[str, Any]:
        wanted = str(data.get("device", {}).get("apply_profile", True)).lower() not in ("false", "0", "no")
        return profile if profile and wanted else {}

    return config_loader.load_config(
        EdgeConfig, path, prefix=ENV_PREFIX, error=ConfigError, env=env, under=under
    )
