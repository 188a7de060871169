"""Tools: the interface, the registry, the built-ins and the execution gateway."""

from .base import Notes, Tool, ToolContext, ToolOutput, ToolSpec
from .builtins import FunctionTool, builtin_tools
from .gateway import Admission, Decision, ExecutionGateway, Interceptor
from .registry import ENTRY_POINT_GROUP, ToolRegistry

__all__ = [
    "ENTRY_POINT_GROUP",
    "Admission",
    "Decision",
    "ExecutionGateway",
    "FunctionTool",
    "Interceptor",
    "Notes",
    "Tool",
    "ToolContext",
    "ToolOutput",
    "ToolRegistry",
    "ToolSpec",
    "builtin_tools",
]
