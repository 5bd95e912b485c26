"""Tools from MCP (Model Context Protocol) servers, allowlisted like tool modules: see docs/mcp.md.

`load_mcp_servers(path)` reads the `mcp_servers` file strictly; `McpToolbox` keeps one session per server on its own
event loop thread and offers the allowed tools as `ToolSpec`s next to the module tools.
"""

from .config import McpConfigError, ServerConfig, load_mcp_servers
from .spec import McpToolSpec, tool_result_value
from .toolbox import McpLoadError, McpToolbox

__all__ = ["McpConfigError", "McpLoadError", "McpToolSpec", "McpToolbox", "ServerConfig", "load_mcp_servers",
           "tool_result_value"]
