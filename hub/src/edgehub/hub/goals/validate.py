"""From a draft the model wrote to a ``Plan`` the hub may dispatch, or a ``PlanRejected`` saying why not.

"The model suggests, the platform decides": a draft is only a proposal. Mistakes a small model
makes that have one obvious fix are repaired, and each repair is listed on the plan (``repairs``) for
operators to see; anything else rejects the whole draft, because a half-used plan is worse than asking
again. The rules, in the order they are checked:

- at most ``Limits.max_tasks`` tasks, with unique ids;
- ``needs`` naming no task of the draft, or the task itself, are dropped (repair);
- no cycles (the cycle is named: ``cycle: a -> b -> a``), at most ``Limits.max_depth`` levels;
- each required tool is offered by an online, non-draining device; a name that differs from one only
  in case or separators (space, ``-``, ``_``) is read as that tool (repair); and some such device
  offers all of a task's tools and matches its labels;
- each estimate within ``Limits.task_tokens`` and their sum within ``Limits.budget_tokens``.

Pure logic: the fleet is passed in (``DeviceView``), nothing is read or sent.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from .draft import PlanDraft, TaskDraft
from .errors import PlanRejected
from .placement import DeviceView


@dataclass(frozen=True, slots=True)
class Limits:
    """How big a plan may be; the defaults suit a small fleet of small models."""

    max_tasks: int = 12
    max_depth: int = 5
    """Levels: the longest chain of tasks each needing the one before."""
    budget_tokens: int = 100_000
    """The goal's budget: the sum of the tasks' estimates."""
    task_tokens: int = 20_000
    """One task's estimate."""

    def __post_init__(self) -> None:
        for name in ("max_tasks", "max_depth", "budget_tokens", "task_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"Limits.{name} must be at least 1, not {getattr(self, name)}")


@dataclass(frozen=True, slots=True)
class PlannedTask:
    """A task of a validated plan."""

    id: str
    goal: str
    needs: tuple[str, ...]
    """Tasks whose results it takes (all in the plan, none itself)."""
    tools: tuple[str, ...]
    """As the fleet names them."""
    estimate_tokens: int
    level: int
    """0 for a task that needs nothing, else one more than the deepest task it needs."""
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    avoid: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    subgoal: bool = False
    """Planned again by a sub-planner rather than run by one agent."""


@dataclass(frozen=True)
class Plan:
    """A validated, acyclic plan: tasks in topological order (by level, then as the model wrote them)."""

    tasks: tuple[PlannedTask, ...]
    repairs: tuple[str, ...] = ()
    """What validation changed in the model's draft, in words for an operator."""
    _by_id: Mapping[str, PlannedTask] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", MappingProxyType({t.id: t for t in self.tasks}))

    def task(self, task_id: str) -> PlannedTask:
        return self._by_id[task_id]

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(t.id for t in self.tasks)

    @property
    def levels(self) -> tuple[tuple[str, ...], ...]:
        """Task ids per level: tasks of one level never depend on each other, so they may run in
        parallel (the forks); a level starts once what its tasks need is done."""
        depth = max((t.level for t in self.tasks), default=-1) + 1
        return tuple(tuple(t.id for t in self.tasks if t.level == n) for n in range(depth))

    @property
    def total_tokens(self) -> int:
        return sum(t.estimate_tokens for t in self.tasks)

    def dependants(self, task_id: str) -> tuple[str, ...]:
        """The tasks that need ``task_id``'s result."""
        return tuple(t.id for t in self.tasks if task_id in t.needs)

    @property
    def joins(self) -> tuple[str, ...]:
        """Tasks that wait for several others' results."""
        return tuple(t.id for t in self.tasks if len(t.needs) > 1)

    def ready(self, done: Collection[str]) -> tuple[str, ...]:
        """Tasks not ``done`` whose needs all are: what may be dispatched now, once those already
        running are left out."""
        return tuple(t.id for t in self.tasks if t.id not in done and all(n in done for n in t.needs))

    def upstream(self, task_id: str) -> frozenset[str]:
        """Every task ``task_id`` depends on, directly or not."""
        seen: set[str] = set()
        todo = list(self.task(task_id).needs)
        while todo:
            if (n := todo.pop()) not in seen:
                seen.add(n)
                todo.extend(self.task(n).needs)
        return frozenset(seen)

    def independent(self, a: str, b: str) -> bool:
        """Neither needs the other, even indirectly: the two may run at the same time."""
        return a != b and a not in self.upstream(b) and b not in self.upstream(a)


def validate(draft: PlanDraft, fleet: Sequence[DeviceView], limits: Limits | None = None) -> Plan:
    """``draft`` checked and repaired against ``fleet`` and ``limits``; ``PlanRejected`` otherwise."""
    limits = limits or Limits()
    repairs: list[str] = []
    tasks = draft.tasks
    if len(tasks) > limits.max_tasks:
        raise PlanRejected(f"{len(tasks)} tasks; at most {limits.max_tasks} are allowed")
    _check_unique(tasks)
    needs = {t.id: _repair_needs(t, {u.id for u in tasks}, repairs) for t in tasks}
    if cycle := _find_cycle(needs):
        raise PlanRejected(f"cycle: {' -> '.join(cycle)} (each task needs the next)")
    levels = _levels(needs)
    _check_depth(levels, needs, limits.max_depth)
    tools = _repair_tools(tasks, fleet, repairs)
    for t in tasks:
        _check_placeable(t, tools[t.id], fleet)
    _check_budget(tasks, limits)
    order = sorted(range(len(tasks)), key=lambda i: (levels[tasks[i].id], i))
    planned = tuple(_planned(tasks[i], needs, tools, levels) for i in order)
    return Plan(planned, tuple(repairs))


def _planned(
    t: TaskDraft,
    needs: Mapping[str, tuple[str, ...]],
    tools: Mapping[str, tuple[str, ...]],
    levels: dict[str, int],
) -> PlannedTask:
    return PlannedTask(
        t.id,
        t.goal,
        needs[t.id],
        tools[t.id],
        t.estimate_tokens,
        levels[t.id],
        MappingProxyType(dict(t.labels)),
        MappingProxyType(dict(t.avoid)),
        t.subgoal,
    )


def _check_unique(tasks: Sequence[TaskDraft]) -> None:
    first: dict[str, int] = {}
    for i, t in enumerate(tasks, 1):
        if t.id in first:
            raise PlanRejected(f"duplicate task id {t.id!r} (tasks {first[t.id]} and {i})")
        first[t.id] = i


def _repair_needs(t: TaskDraft, ids: set[str], repairs: list[str]) -> tuple[str, ...]:
    kept: list[str] = []
    for n in dict.fromkeys(t.needs):  # a repeated need is the same need
        if n == t.id:
            repairs.append(f"task {t.id!r}: dropped its need on itself")
        elif n not in ids:
            repairs.append(f"task {t.id!r}: dropped the need {n!r}, which is no task of the plan")
        else:
            kept.append(n)
    return tuple(kept)


def _find_cycle(needs: Mapping[str, tuple[str, ...]]) -> list[str]:
    """A cycle of ``needs`` as ``[a, b, a]`` (a needs b needs a), or ``[]``; deterministic."""
    done: set[str] = set()
    path: list[str] = []

    def visit(n: str) -> list[str]:
        path.append(n)
        for m in needs[n]:
            if m in path:
                return [*path[path.index(m) :], m]
            if m not in done and (cycle := visit(m)):
                return cycle
        path.pop()
        done.add(n)
        return []

    for n in needs:
        if n not in done and (cycle := visit(n)):
            return cycle
    return []


def _levels(needs: Mapping[str, tuple[str, ...]]) -> dict[str, int]:
    """Each task's level (needs must be acyclic)."""
    levels: dict[str, int] = {}

    def level(n: str) -> int:
        if n not in levels:
            levels[n] = 1 + max((level(m) for m in needs[n]), default=-1)
        return levels[n]

    for n in needs:
        level(n)
    return levels


def _check_depth(levels: dict[str, int], needs: Mapping[str, tuple[str, ...]], max_depth: int) -> None:
    deepest = max(levels, key=lambda n: levels[n], default="")
    if not deepest or levels[deepest] < max_depth:
        return
    chain = [deepest]
    while needs[chain[-1]]:
        chain.append(max(needs[chain[-1]], key=lambda n: levels[n]))
    raise PlanRejected(
        f"the plan is {levels[deepest] + 1} levels deep; at most {max_depth} are allowed "
        f"(longest chain: {' -> '.join(chain)}, each needing the next)"
    )


def _tool_key(name: str) -> str:
    """How tool names are compared for a repair: case and separators aside (``Read File`` ~ ``read_file``)."""
    return re.sub(r"[\s_-]+", "_", name.strip()).casefold()


def _repair_tools(
    tasks: Sequence[TaskDraft], fleet: Sequence[DeviceView], repairs: list[str]
) -> dict[str, tuple[str, ...]]:
    """Each task's tools as the fleet names them; rejects a tool no device that takes work offers."""
    usable = [d for d in fleet if d.eligible]
    if not usable:
        states = ", ".join(f"{d.device_id} ({d.unavailable})" for d in fleet)
        raise PlanRejected(f"no device is online and taking work ({states or 'the fleet is empty'})")
    offered = sorted(set().union(*(d.tools for d in usable)))
    by_key: dict[str, list[str]] = {}
    for name in offered:
        by_key.setdefault(_tool_key(name), []).append(name)
    out: dict[str, tuple[str, ...]] = {}
    for t in tasks:
        names: list[str] = []
        for name in t.tools:
            if name not in offered and len(by_key.get(_tool_key(name), [])) == 1:
                repairs.append(f"task {t.id!r}: tool {name!r} read as {by_key[_tool_key(name)][0]!r}")
                name = by_key[_tool_key(name)][0]
            if name not in offered:
                raise PlanRejected(
                    f"task {t.id!r} needs the tool {name[:64]!r}, which no online, non-draining device "
                    f"offers (they offer: {', '.join(offered) or 'no tools'})"
                )
            names.append(name)
        out[t.id] = tuple(dict.fromkeys(names))
    return out


def _check_placeable(t: TaskDraft, tools: tuple[str, ...], fleet: Sequence[DeviceView]) -> None:
    if any(d.eligible and d.offers(tools) and d.matches(t.labels, t.avoid) for d in fleet):
        return
    wanted = [f"all of the tools {', '.join(tools)}"] if tools else []
    wanted += [f"the labels {dict(t.labels)}"] if t.labels else []
    wanted += [f"none of the labels {dict(t.avoid)}"] if t.avoid else []
    raise PlanRejected(f"task {t.id!r}: no online, non-draining device has {' and '.join(wanted)}")


def _check_budget(tasks: Sequence[TaskDraft], limits: Limits) -> None:
    over = [f"{t.id}: {t.estimate_tokens}" for t in tasks if t.estimate_tokens > limits.task_tokens]
    if over:
        raise PlanRejected(
            f"task estimates over the per-task limit of {limits.task_tokens} tokens ({', '.join(over)})"
        )
    total = sum(t.estimate_tokens for t in tasks)
    if total > limits.budget_tokens:
        raise PlanRejected(
            f"the tasks estimate {total} tokens in total; the goal's budget is {limits.budget_tokens}"
        )
