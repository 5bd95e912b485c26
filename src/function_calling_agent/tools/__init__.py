"""Tools the agent may call: define them with `@tool`, load the modules a server offers, run calls safely.

For tool authors, everything needed is here:

    from function_calling_agent.tools import ToolError, tool

    @tool(timeout_s=5)
    def get_weather(city: str) -> dict:
        \"\"\"Get the current weather of a city.

        Args:
            city: City name, e.g. Paris.
        \"\"\"

The built-in finance tools are the module `function_calling_agent.tools.finance`.
"""

from .registry import (
    ToolError,
    ToolNotOfferedError,
    ToolRegistry,
    build_tool_spec,
    load_tool_modules,
    module_tools,
    spec_of,
    tool,
)
from .spec import ToolDefinitionError, ToolSpec, ToolStatus

__all__ = [
    "ToolDefinitionError",
    "ToolError",
    "ToolNotOfferedError",
    "ToolRegistry",
    "ToolSpec",
    "ToolStatus",
    "build_tool_spec",
    "load_tool_modules",
    "module_tools",
    "spec_of",
    "tool",
]
