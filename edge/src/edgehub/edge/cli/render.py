"""Rendering an agent's mind-log for people (rich) and programs (JSON)."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf.json_format import MessageToDict
from rich.console import Console
from rich.markup import escape

from edgehub.protocol.v1 import agent_pb2

from ..jsontypes import JsonObject

S = agent_pb2


def event_dict(event: agent_pb2.StepEvent) -> JsonObject:
    """JSON-ready form of a mind-log entry (proto3 JSON mapping, field names as in the .proto)."""
    return MessageToDict(event, preserving_proto_field_name=True)


def state_dict(state: agent_pb2.AgentState) -> JsonObject:
    return MessageToDict(state, preserving_proto_field_name=True)


def status_name(status: agent_pb2.AgentStatus.ValueType) -> str:
    return S.AgentStatus.Name(status).removeprefix("AGENT_STATUS_").lower()


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def print_event(console: Console, event: agent_pb2.StepEvent) -> None:
    """One mind-log entry as two or three readable lines."""
    n = event.step + 1
    if event.kind == S.STEP_KIND_COMPACTION:
        console.print(f"[dim]step {n}: compacted earlier steps → {escape(_short(event.detail))}[/]")
        return
    if event.kind == S.STEP_KIND_END:
        console.print(f"[bold red]{status_name(event.status)}[/]: {escape(event.detail)}")
        return
    if event.kind == S.STEP_KIND_APPROVAL_REQUESTED:
        key = f"{event.agent_id}/{event.step}"
        console.print(
            f"[bold yellow]step {n} waits for approval[/] [cyan]{escape(event.action.tool)}[/] "
            f"{escape(_short(event.action.args_json, 120))}: {escape(_short(event.detail))}\n"
            f"  decide with: edgehub approvals decide {key} --approve|--deny --by NAME"
        )
        return
    if event.kind == S.STEP_KIND_APPROVAL_DECIDED:
        console.print(f"[bold yellow]step {n} approval[/]: {escape(event.detail)}")
        return
    obs = event.observation
    tool = escape(event.action.tool or "(invalid action)")
    args = escape(_short(event.action.args_json, 120))
    t = event.tokens
    console.print(
        f"[bold]step {n}[/] [cyan]{tool}[/] {args}  "
        f"[dim]{event.timings.total_ms:.0f} ms, {t.evaluated}/{t.prompt} prompt tokens evaluated, "
        f"{t.completion} generated[/]"
    )
    if event.plan:
        console.print(f"  [italic]plan:[/] {escape('; '.join(event.plan))}")
    if event.thought:
        console.print(f"  [italic]thought:[/] {escape(_short(event.thought))}")
    mark = "[green]ok[/]" if obs.ok else f"[red]{escape(obs.error)}[/]"
    replay = " [dim](replayed)[/]" if obs.replayed else ""
    console.print(f"  {mark}{replay}: {escape(_short(obs.output))}")
    d = obs.decision
    if d.effect:
        who = f", approved by {escape(d.approved_by)}" if d.approved_by else ""
        hosts = f", network: {escape(', '.join(d.network))}" if d.network else ""
        console.print(f"  [dim]policy: {d.effect} by rule {escape(d.rule)}{who}{hosts}[/]")
    if event.detail and event.detail != obs.output:  # a guard's warning or stop reason
        console.print(f"  [yellow]{escape(_short(event.detail))}[/]")


def print_summary(console: Console, state: agent_pb2.AgentState) -> None:
    u = state.usage
    line = (
        f"agent {state.agent_id}: [bold]{status_name(state.status)}[/] after {u.steps} steps, "
        f"{u.tool_calls} tool calls, {u.evaluated_tokens + u.completion_tokens} tokens, "
        f"{u.wall_seconds:.1f} s"
    )
    console.print(line)
    if state.answer:
        console.print(f"answer: [bold green]{escape(state.answer)}[/]")
    if state.verification:
        verdict = S.Verification.Name(state.verification).removeprefix("VERIFICATION_").lower()
        what = ", ".join(f"{d.kind} {d.target}".strip() for d in state.deliverables) or "nothing checkable"
        console.print(f"deliverables ({escape(what)}): {verdict}")
    if state.failure_reason:
        console.print(f"reason: {escape(state.failure_reason)}")


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)
