"""The tool registry: which tools exist, their schemas, and the action grammar built from them."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from importlib.metadata import EntryPoint, entry_points

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from ...config import ToolsConfig
from ...errors import ToolError
from ...jsontypes import JsonObject
from .base import Tool, ToolSpec

NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
ENTRY_POINT_GROUP = "edgehub.tools"
THOUGHT_MAX_CHARS = 200


class ToolRegistry:
    """Named tools with validated JSON-schema parameters."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        self._validators: dict[str, Draft202012Validator] = {}
        for tool in tools:
            self.register(tool)

    def register(self, tool: Tool) -> None:
        spec = tool.spec
        if not NAME.match(spec.name):
            raise ToolError(f"name must match {NAME.pattern}", tool=spec.name)
        if spec.name in self._tools:
            raise ToolError("registered twice", tool=spec.name)
        if spec.parameters.get("type") != "object":
            raise ToolError('parameters must be a JSON schema with "type": "object"', tool=spec.name)
        try:
            Draft202012Validator.check_schema(spec.parameters)
        except SchemaError as exc:
            raise ToolError(f"invalid parameters schema: {exc.message}", tool=spec.name) from None
        self._tools[spec.name] = tool
        self._validators[spec.name] = Draft202012Validator(spec.parameters)

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def validator(self, name: str) -> Draft202012Validator:
        return self._validators[name]

    def names(self) -> list[str]:
        return list(self._tools)

    def specs(self) -> list[ToolSpec]:
        return [t.spec for t in self._tools.values()]

    def only(self, names: Iterable[str]) -> ToolRegistry:
        """A registry with just ``names`` (each must exist)."""
        wanted = list(names)
        unknown = [n for n in wanted if n not in self._tools]
        if unknown:
            known = ", ".join(sorted(self._tools))
            raise ToolError(f"not registered (known tools: {known})", tool=",".join(unknown))
        return ToolRegistry(self._tools[n] for n in wanted)

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        """Register third-party tools published under the ``edgehub.tools`` entry point group."""
        for ep in entry_points(group=group):
            for tool in _load_entry_point(ep):
                self.register(tool)

    @classmethod
    def default(cls, cfg: ToolsConfig, extra: Iterable[Tool] = ()) -> ToolRegistry:
        """Built-ins (+ ``extra``, before ``finish``) + entry-point tools, filtered by ``cfg.enabled``."""
        from .builtins import builtin_tools  # local: builtins imports this module's siblings

        tools = builtin_tools(command_timeout_s=cfg.command_timeout_s)
        last = [t for t in tools if t.spec.name == "finish"]
        registry = cls([*(t for t in tools if t.spec.name != "finish"), *extra, *last])
        if cfg.load_entry_points:
            registry.load_entry_points()
        return registry.only(cfg.enabled) if cfg.enabled is not None else registry

    def action_schema(self, *, plan: bool = False, without: Iterable[str] = ()) -> JsonObject:
        """JSON schema of one model action; the brain's grammar is built from it.

        One ``anyOf`` branch per tool, each fixing ``tool`` to the tool's name and ``args`` to its
        parameters, with properties in the order the model should write them. ``plan``: the action
        starts with the agent's step plan (a short list of steps). ``without``: tools this action may
        not call (the loop withholds ``finish`` while the goal's work is visibly not done).
        """
        skip = set(without)
        return {"anyOf": [_branch(spec, plan) for spec in self.specs() if spec.name not in skip]}

    def guided_schema(
        self, tool: str, *, plan: bool = False, fixed: Mapping[str, str] | None = None
    ) -> JsonObject:
        """JSON schema of an action that must call ``tool``, with the arguments in ``fixed`` (those the
        tool takes) fixed to their values: the step the goal's next unmet deliverable needs
        (``steering.Steering.guided``)."""
        spec = self._tools[tool].spec
        branch = _branch(spec, plan)
        params = spec.parameters.get("properties")
        if not isinstance(params, dict):
            params = {}
        pinned: JsonObject = {k: {"const": v} for k, v in (fixed or {}).items() if v and k in params}
        if pinned:
            args = dict(spec.parameters)
            args["properties"] = {**params, **pinned}
            branch["properties"] = {**branch["properties"], "args": args}  # type: ignore[dict-item]
        return {"anyOf": [branch]}


PLAN_SCHEMA: JsonObject = {
    "type": "array",
    "items": {"type": "string", "maxLength": 80},
    "minItems": 1,
    "maxItems": 5,
}


def _branch(spec: ToolSpec, plan: bool) -> JsonObject:
    properties: JsonObject = {"plan": PLAN_SCHEMA} if plan else {}
    properties |= {
        "thought": {"type": "string", "maxLength": THOUGHT_MAX_CHARS},
        "tool": {"const": spec.name},
        "args": spec.parameters,
    }
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def _load_entry_point(ep: EntryPoint) -> list[Tool]:
    try:
        made = ep.load()()
    except Exception as exc:
        raise ToolError(f"entry point {ep.value} failed to load: {exc}", tool=ep.name) from exc
    tools = list(made) if isinstance(made, list | tuple) else [made]
    for tool in tools:
        if not isinstance(getattr(tool, "spec", None), ToolSpec) or not callable(tool):
            raise ToolError(f"entry point {ep.value} did not return tools", tool=ep.name)
    return tools
