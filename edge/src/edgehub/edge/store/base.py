"""The edge's durable store: agent state, mind-log, L2 turns and notes, tool intents, outbox.

One SQLite database per device (WAL, ``synchronous=FULL``). The invariant the loop relies on:
``checkpoint`` commits the new agent state, the step's mind-log event, its L2 turns, the tool
intent's result and the outbox entry in ONE transaction, so after a crash either all of a step is
there or none of it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from edgehub.protocol.v1 import agent_pb2, events_pb2

from ..errors import StoreRolledBack


@dataclass(frozen=True, slots=True)
class Intent:
    """A tool call recorded before it ran (crash-safety for side effects)."""

    key: str
    """Idempotency key ``<agent_id>/<step>``."""
    agent_id: str
    step: int
    tool: str
    args_json: str
    proposal_json: str
    """The model's full proposal (thought + action) so a resumed step does not ask the model again."""
    result: agent_pb2.ToolResult | None
    """Set once the step that ran the call was checkpointed."""


@dataclass(frozen=True, slots=True)
class Approval:
    """A tool call that policy marked needs-approval, and the operator's decision."""

    key: str
    """The call's idempotency key ``<agent_id>/<step>``."""
    agent_id: str
    step: int
    tool: str
    args_json: str
    proposal_json: str
    """The model's proposal, replayed on resume so the model is not asked again."""
    rule: str
    reason: str
    status: str = "pending"
    """``pending``, ``approved`` or ``denied``."""
    decided_by: str = ""
    """Who decided, as verified: ``operator:NAME`` (the API token the hub authenticated and signed for)
    or ``local:USER`` (the OS user who ran ``edgehub approvals decide`` on the device)."""
    note: str = ""
    requested_at: float = 0.0
    decided_at: float | None = None
    decided_via: str = ""
    """``hub`` (a decision the hub signed), ``local`` (on the device), '' (decided before decisions
    were verified: ``decided_by`` is free text)."""
    decision_id: str = ""
    """The hub's signed decision that decided it: each is applied at most once."""
    policy_version: int = 0
    """The hub bundle's version of the policy that asked for the approval (0: the device's own file or
    the default policy)."""
    policy_digest: str = ""
    """Digest of that policy's text ('' before schema 13), so an audit finds the exact rules."""


@dataclass(frozen=True, slots=True)
class VaultEntry:
    """A masked token and its sealed (encrypted) original."""

    token: str
    kind: str
    sealed: bytes


@dataclass(frozen=True, slots=True)
class Episode:
    """An L3 memory: what happened, when, how much it matters, where it came from."""

    key: str
    agent_id: str
    text: str
    at: float
    importance: float
    source_step: int
    embedding: bytes = b""
    """float32 x 384, little-endian (empty when read back)."""
    distance: float = 0.0
    """Cosine distance to the query (recall results only)."""


class OutgoingFilter(Protocol):
    """Applied to every event as it enters the outbox (PII masking); returns vault entries to keep."""

    def __call__(self, event: agent_pb2.StepEvent) -> tuple[agent_pb2.StepEvent, list[VaultEntry]]: ...

    def mask(self, text: str, sealed: list[VaultEntry] | None = None) -> str:
        """``text`` with what the filter masks replaced (vault entries appended to ``sealed``)."""
        ...


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    seq: int
    """Per-device, strictly increasing, gap-free."""
    event: events_pb2.EdgeEvent
    traceparent: str = ""
    """W3C trace context of the span that wrote the event (the step's checkpoint); '' untraced."""


class EdgeStore(Protocol):
    """Durable state of every agent on this device. Methods are blocking and fast (local SQLite)."""

    # agents
    def create_agent(self, state: agent_pb2.AgentState) -> None:
        """Insert a new agent; raises if the id exists."""
        ...

    def has_agent(self, agent_id: str) -> bool: ...

    def load_agent(self, agent_id: str) -> agent_pb2.AgentState:
        """Latest checkpointed state; raises AgentNotFound."""
        ...

    def list_agents(self, statuses: tuple[int, ...] = ()) -> list[agent_pb2.AgentState]:
        """Agents, optionally only those with one of ``statuses``, oldest first."""
        ...

    def update_agent(self, state: agent_pb2.AgentState) -> None:
        """Overwrite an agent's state outside a step (e.g. status change on stop)."""
        ...

    # intents
    def begin_intent(self, intent: Intent) -> None:
        """Durably record a call before running it (no-op if the key exists)."""
        ...

    def get_intent(self, key: str) -> Intent | None: ...

    # the step commit
    def checkpoint(
        self,
        state: agent_pb2.AgentState,
        event: agent_pb2.StepEvent,
        turns: list[agent_pb2.Turn],
        result: agent_pb2.ToolResult | None = None,
        approval: Approval | None = None,
    ) -> int:
        """Commit state + event (mind-log and outbox) + turns + intent result + approval atomically.

        Returns the outbox sequence number given to the event.
        """
        ...

    # approvals
    def get_approval(self, key: str) -> Approval | None: ...

    def list_approvals(self, status: str | None = "pending") -> list[Approval]: ...

    def decide_approval(
        self, approval: Approval, state: agent_pb2.AgentState, event: agent_pb2.StepEvent
    ) -> None:
        """Record a decision (``approval`` carries it, with its ``decision_id`` when the hub signed it)
        and the agent's new state and event, atomically.

        Raises StoreError if the approval is not pending any more.
        """
        ...

    # PII vault
    def vault_get(self, token: str) -> VaultEntry | None: ...

    # L2 session memory
    def turns(self, agent_id: str, from_step: int = 0) -> list[agent_pb2.Turn]:
        """Turns of steps >= from_step, in order."""
        ...

    def put_note(self, agent_id: str, key: str, value: str) -> None: ...

    def get_note(self, agent_id: str, key: str) -> str | None: ...

    def search_notes(self, agent_id: str, query: str, limit: int = 5) -> list[tuple[str, str]]: ...

    # mind-log and outbox
    def mind_log(
        self, agent_id: str, after_step: int = -1, limit: int = 1000
    ) -> list[agent_pb2.StepEvent]: ...

    def outbox_pending(self, limit: int = 1000) -> list[OutboxEntry]: ...

    def outbox_ack(self, upto_seq: int) -> None:
        """Mark every entry with seq <= upto_seq as delivered."""
        ...

    def outbox_depth(self) -> int:
        """Entries not yet delivered."""
        ...

    def outbox_head(self) -> int:
        """The sequence of the newest entry (0: none yet)."""
        ...

    # durability
    @property
    def rolled_back(self) -> StoreRolledBack | None:
        """Why nothing may run on this store: it lost commits its watermark recorded (None: it did not)."""
        ...

    def held_agents(self) -> list[str]:
        """The active agents, which a store that lost commits holds (resuming them would repeat steps)."""
        ...

    def wal_checkpoint(self) -> tuple[int, int]:
        """Copy the write-ahead log into the database without waiting for readers; (frames, copied)."""
        ...

    def close(self) -> None: ...


class AgentTransfer(Protocol):
    """What moving an agent between devices needs of the store (``uplink/migration``)."""

    def has_agent(self, agent_id: str) -> bool: ...

    def load_agent(self, agent_id: str) -> agent_pb2.AgentState: ...

    def export_agent(self, agent_id: str) -> agent_pb2.AgentBundle:
        """What moves with the agent: state, turns, notes, approvals."""
        ...

    def import_agent(self, bundle: agent_pb2.AgentBundle, epoch: int) -> bool:
        """Take over the agent in ``bundle`` at ``epoch``; False when this copy is as new already."""
        ...

    def mark_migrated(self, agent_id: str, migration_id: str, target: str) -> agent_pb2.AgentState:
        """The agent left for ``target``: never run here again."""
        ...

    def unmark_migrated(self, agent_id: str, migration_id: str) -> bool:
        """The handover was refused: the agent runs here again."""
        ...


class EpisodeStore(Protocol):
    """L3 episodic memory: embedded episodes and their KNN (``memory/episodic``)."""

    def add_episodes(self, episodes: Sequence[Episode], *, replicate: str | None = None) -> int:
        """Store new episodes (``replicate``: also into the outbox); how many were new."""
        ...

    def nearest_episodes(
        self, embedding: bytes, k: int, agent_id: str | None = None, *, candidates: int = 0
    ) -> list[Episode]: ...

    def prune_episodes(
        self, keys: Sequence[str], run_id: str, *, keep_s: float, now: float | None = None
    ) -> tuple[int, int]:
        """Mark episodes the hub consolidated, delete those past retention: (marked, deleted)."""
        ...

    def recent_episode_texts(self, limit: int = 500) -> list[str]: ...

    def episode_count(self) -> int: ...

    def unindexed_steps(self, after_id: int = 0, limit: int = 256) -> list[tuple[int, agent_pb2.StepEvent]]:
        """(mind-log id, step) of steps that have no episode yet, oldest first."""
        ...

    def load_agent(self, agent_id: str) -> agent_pb2.AgentState:
        """The agent's state (a finished agent's outcome becomes an episode when it was verified)."""
        ...


class KnowledgeCache(Protocol):
    """The hub's L4 answers kept on the device for offline use (``uplink/knowledge``)."""

    def knowledge_cached(self, query: str) -> tuple[bytes, float] | None:
        """(answer, fetched_at) of the last answer to ``query``, or None."""
        ...

    def cache_knowledge(self, query: str, answer: bytes, fetched_at: float) -> None: ...


@dataclass(frozen=True, slots=True)
class Totals:
    """What the store holds of one kind of data (``retention.KINDS``)."""

    rows: int
    bytes: int
    """Stored bytes of the rows' data (an estimate: record overhead and indexes are not counted)."""
    oldest: float | None
    """Unix time of the oldest row; None when there is none."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """A row nothing needs any more: retention may delete it."""

    key: str | int
    at: float
    """When it was written (mind-log: when its agent ended)."""
    bytes: int


class RetainedStore(Protocol):
    """What retention needs of the store (``retention.Pruner``)."""

    def retention_totals(self, kind: str) -> Totals: ...

    def prune_candidates(self, kind: str, limit: int, indexed_through: int | None = None) -> list[Candidate]:
        """Rows of ``kind`` nothing needs any more, oldest first; ``indexed_through``: the last mind-log
        id L3 has indexed (None: L3 is off)."""
        ...

    def prune_rows(self, kind: str, keys: Sequence[str | int], indexed_through: int | None = None) -> int:
        """Delete these candidates (and what goes with them) where still eligible, in one transaction;
        how many went."""
        ...

    def incremental_vacuum(self, pages: int) -> int:
        """Hand up to ``pages`` free pages back to the file system; how many were."""
        ...


class DeviceStore(EdgeStore, AgentTransfer, EpisodeStore, KnowledgeCache, RetainedStore, Protocol):
    """The whole store of a device, as the daemon holds it."""
