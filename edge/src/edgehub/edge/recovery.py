"""Recovery of a store that went back in time from what the hub holds (``edgehub edge doctor --store
--recover-from-hub``).

The hub keeps, of this device: the last outbox sequence it applied, the agent records it owns (epoch,
status, last step) and every step event it received (the events stream). It never held an agent's
checkpoint (its transcript, summary, guard, plan) outside a migration, so an agent cannot be rebuilt
from it. What recovery does, in one go on the stopped device:

- the outbox goes on after the hub's applied sequence, and the watermark is written again
  (``SqliteStore.accept_rollback``), so new events are not dropped by the hub as resends;
- an active agent whose lost steps the hub saw (its events from the step the device's checkpoint
  would run next) is stopped, not resumed: resuming would run those steps' side effects again. Its
  end (with the lost steps in the reason) goes to the hub like any other end; one that had already
  ended on the hub's record takes that end here instead (nothing is sent);
- an agent the device lost entirely but the hub holds as active gets a stopped record here with
  what the hub saw, and its end goes to the hub;
- the other active agents resume from their checkpoints, as after ``--accept-rollback``.

What is lost stays lost and is printed: the checkpoints (the hub's events show what the steps did,
not the state to resume from) and any step the hub never received.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgehub.protocol.v1 import agent_pb2, hub_pb2

from .agent.journal import step_event
from .agent.loop import TERMINAL
from .errors import StoreError
from .store.sqlite import SqliteStore
from .store.sqlite.watermark import AcceptedRollback

S = agent_pb2
MAX_SHOWN_STEPS = 20
"""Lost steps listed per agent in its stop reason (all of them are in the recovery's output)."""


@dataclass(frozen=True, slots=True)
class AgentLoss:
    """What one agent lost that the hub had seen."""

    agent_id: str
    kept_step: int
    """The step its checkpoint here would run next (-1: the store has no such agent)."""
    hub_status: int
    steps: tuple[str, ...]
    """One line per step event the hub received from ``kept_step`` on."""
    last_step: int
    """The last step the hub saw (-1: none)."""
    truncated: bool

    @property
    def line(self) -> str:
        """The loss in one line."""
        where = "gone from this store"
        if self.kept_step >= 0:
            where = f"this store resumes it at step {self.kept_step}"
        more = " (and more the hub did not return)" if self.truncated else ""
        return f"agent {self.agent_id}: {where}; the hub saw {len(self.steps)} step event(s) after that{more}"


def describe(event: agent_pb2.StepEvent) -> str:
    """A step event the hub received, in one line."""
    kind = S.StepKind.Name(event.kind).removeprefix("STEP_KIND_").lower()
    if event.HasField("action") and event.action.tool:
        result = "ok" if event.observation.ok else f"error {event.observation.error}"
        return f"step {event.step} {kind}: {event.action.tool} {event.action.args_json} -> {result}"
    return f"step {event.step} {kind}: {event.detail[:200]}".rstrip(": ")


def next_steps(store: SqliteStore) -> dict[str, int]:
    """Per agent of the store, the step its checkpoint would run next (what the hub is asked from)."""
    return {state.agent_id: state.step for state in store.list_agents()}


def losses(store: SqliteStore, held: hub_pb2.DeviceRecovery) -> list[AgentLoss]:
    """What each agent the hub holds lost here (only those that lost something the hub saw)."""
    found = []
    for agent in held.agents:
        agent_id = agent.record.agent_id
        kept = store.load_agent(agent_id).step if store.has_agent(agent_id) else -1
        if kept >= 0 and not agent.events:
            continue
        steps = tuple(describe(e) for e in agent.events)
        last = max((e.step for e in agent.events), default=agent.record.step if kept < 0 else -1)
        found.append(AgentLoss(agent_id, kept, agent.record.status, steps, last, agent.truncated))
    return found


@dataclass(frozen=True, slots=True)
class Recovered:
    """What ``recover`` did."""

    accepted: AcceptedRollback
    stopped: tuple[str, ...]
    """Agents stopped instead of resumed (they would repeat steps the hub saw), or recorded stopped."""
    losses: tuple[AgentLoss, ...]
    unrecoverable: tuple[str, ...]
    """What could not be brought back, one line each."""


def recover(store: SqliteStore, held: hub_pb2.DeviceRecovery, by: str) -> Recovered:
    """Recover ``store`` from ``held`` (see the module docstring); ``StoreError`` when the store lost
    nothing (neither behind its watermark nor the hub's applied sequence)."""
    store.compare_hub(int(held.applied_seq))
    if store.rollback is None:
        why = "lost nothing the watermark or the hub knows of: nothing to recover"
        raise StoreError(why, path=str(store.path))
    found = losses(store, held)
    accepted = store.accept_rollback(by, tuple(loss.line for loss in found))
    records = {a.record.agent_id: a.record for a in held.agents}
    stopped = []
    for loss in found:
        if _stop(store, loss, records[loss.agent_id], by):
            stopped.append(loss.agent_id)
    gone = [loss.agent_id for loss in found if loss.kept_step < 0]
    unrecoverable = [
        "agent checkpoints newer than what this store kept (the hub holds events, not checkpoints)",
        *(f"agent {a}: its goal, transcript and memory (the hub holds only its steps' events)" for a in gone),
        "steps the hub never received (events still in the lost part of the outbox)",
    ]
    return Recovered(accepted, tuple(stopped), tuple(found), tuple(unrecoverable))


def _stop(store: SqliteStore, loss: AgentLoss, record: hub_pb2.AgentRecord, by: str) -> bool:
    """Stop the agent of ``loss`` here, with the steps it lost in the reason (a record is made for an
    agent this store lost entirely); False when there is nothing to stop. An agent that ended on the
    hub's record takes that end here, and nothing is sent (the hub has it); one active there is
    STOPPED, and its end goes to the hub like any other."""
    ended = record.status in TERMINAL
    if loss.kept_step >= 0:
        state = store.load_agent(loss.agent_id)
        if state.status in TERMINAL:
            return False
    elif ended or record.status == S.AGENT_STATUS_MIGRATED:
        return False  # nothing here would resume it
    else:
        state = S.AgentState(schema_version=1, agent_id=loss.agent_id, epoch=record.epoch)
        state.created_at.GetCurrentTime()
        store.create_agent(state)
    shown = "; ".join(loss.steps[:MAX_SHOWN_STEPS]) + (" ..." if len(loss.steps) > MAX_SHOWN_STEPS else "")
    new = S.AgentState()
    new.CopyFrom(state)
    new.status = record.status if ended else S.AGENT_STATUS_STOPPED
    new.epoch = max(state.epoch, record.epoch)
    new.step = max(state.step, loss.last_step + 1)
    new.failure_reason = (
        f"store rolled back; recovered from the hub by {by}: not resumed, so the side effects of steps the"
        f" hub saw are not repeated. Lost here: {shown or loss.line}"
    )
    new.updated_at.GetCurrentTime()
    if ended:
        store.update_agent(new)
        return True
    event = step_event(new, S.STEP_KIND_END, "end", store.device_id)
    event.detail = new.failure_reason
    store.checkpoint(new, event, [])
    return True
