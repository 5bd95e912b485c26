"""The tools of the configured MCP servers, offered next to the module tools under the same allowlist discipline.

    toolbox = McpToolbox(load_mcp_servers(path), module_tools=registry, default_timeout_s=10)
    toolbox.start()            # connects; raises McpLoadError if a required server is down or misconfigured
    offered = toolbox.registry()   # per request: module tools + the MCP tools of the servers that are up
    toolbox.close()

What is offered is decided once per server, at its first successful listing: the listed tools that `allowed_tools`
names (or all of them for "*"), under their prefixed names. Later listings (reconnects, `tools/list_changed`) never
add to it: a server cannot widen what the operator vetted. A tool it stops listing stays offered, and its calls fail
with the server's error for the model to read. An optional server's tools are offered from the moment it first
comes up; until then requests do not see them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from typing import Any, Callable, Optional, Sequence

from ..registry import ToolRegistry
from ..spec import ToolDefinitionError
from .config import ALL_TOOLS, ServerConfig
from .connection import ServerConnection
from .spec import McpToolSpec, tool_result_value

SHUTDOWN_TIMEOUT_S = 15.0


class McpLoadError(ToolDefinitionError):
    """The MCP configuration cannot be served: a clash, a required server down, an allowed tool it does not list."""


class _StdLogger:
    """pb_utils.Logger's method names over the standard logging module (used outside Triton)."""

    def __init__(self):
        self._log = logging.getLogger("function_calling_agent.mcp")

    def log_info(self, message: str) -> None:
        self._log.info(message)

    def log_warn(self, message: str) -> None:
        self._log.warning(message)

    def log_error(self, message: str) -> None:
        self._log.error(message)


# on_server_state(label, up, tools_offered, event): event is "connected", "failed" or "lost".
ServerStateHook = Callable[[str, bool, int, str], None]


class McpToolbox:
    def __init__(self, servers: Sequence[ServerConfig], *, module_tools: ToolRegistry = ToolRegistry(),
                 logger: Any = None, on_server_state: Optional[ServerStateHook] = None):
        self.servers = tuple(servers)
        self.module_tools = module_tools
        self._log = logger or _StdLogger()
        self._on_state = on_server_state
        self._lock = threading.Lock()
        self._offered: dict[str, tuple[McpToolSpec, ...]] = {}  # label -> frozen at the first listing
        self._registry = module_tools
        self._loading = True
        self._check_declared_names()
        self._loop = asyncio.new_event_loop()
        self._thread: Optional[threading.Thread] = None
        self._supervisors: list[concurrent.futures.Future] = []
        self.connections = {config.label: ServerConnection(config, self._loop, on_up=self._server_up,
                                                           on_down=self._server_down) for config in self.servers}

    # -- lifecycle ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Starts the loop thread and every server's supervisor; returns when each required server is up.

        Raises `McpLoadError` (after closing everything) naming the first required server that could not be reached
        or whose listing is unusable. Optional servers keep being retried in the background.
        """
        self._thread = threading.Thread(target=self._run_loop, name="fca-mcp", daemon=True)
        self._thread.start()
        for connection in self.connections.values():
            self._supervisors.append(asyncio.run_coroutine_threadsafe(connection.run(), self._loop))
        try:
            for config in self.servers:
                if not config.entry.required:
                    continue
                connection = self.connections[config.label]
                # The supervisor bounds its first attempt by connect_timeout_seconds; the margin covers teardown.
                error = connection.first_outcome.result(timeout=config.entry.connect_timeout_seconds + 30)
                if error is not None:
                    raise McpLoadError(
                        f"MCP server {config.label!r} ({config.describe()}) is required but could not be used: "
                        f"{error}. Fix it, or set required: false to start without it")
        except BaseException:
            self.close()
            raise
        finally:
            self._loading = False
        for config in self.servers:
            if not config.entry.required and config.label not in self._offered:
                self._log.log_warn(f"MCP server {config.label!r} (optional) is not up yet; it is retried in the "
                                   "background and its tools are offered once it is")

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def close(self, timeout: float = SHUTDOWN_TIMEOUT_S) -> None:
        """Ends every session (a stdio server's process is stopped) and the loop thread. Idempotent."""
        if self._thread is None or not self._thread.is_alive():
            return

        async def shutdown():
            for future in self._supervisors:
                future.cancel()
            # Let the cancelled supervisors unwind their sessions (bounded by the SDK's own shutdown timeouts).
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if tasks:
                await asyncio.wait(tasks, timeout=timeout)

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout + 1)
        except (concurrent.futures.TimeoutError, RuntimeError) as exc:
            self._log.log_warn(f"MCP sessions did not all close within {timeout:g} s: {exc!r}")
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._loop.close()

    # -- what requests see --------------------------------------------------------------------------------------
    def registry(self) -> ToolRegistry:
        """Module tools, then each server's offered tools in file order; a new object only when that changes."""
        return self._registry

    def server_states(self) -> dict[str, str]:
        return {label: connection.state for label, connection in self.connections.items()}

    # -- discovery (loop thread) --------------------------------------------------------------------------------
    def _server_up(self, connection: ServerConnection, tools: list) -> None:
        config = connection.config
        listed = {tool.name: tool for tool in tools}
        if config.label in self._offered:
            self._compare_listing(config, listed)
            self._report(config.label, True, "connected")
            return
        strict = self._loading and config.entry.required
        if config.entry.allowed_tools == ALL_TOOLS:
            names = list(listed)
        else:
            missing = [name for name in config.entry.allowed_tools if name not in listed]
            names = [name for name in config.entry.allowed_tools if name in listed]
            if missing:
                problem = (f"MCP server {config.label!r} does not list the allowed tools {missing}; it lists "
                           f"{sorted(listed) or '(none)'}")
                if strict:
                    raise McpLoadError(problem)
                self._log.log_error(problem + "; offering the others")
        specs = []
        for name in names:
            try:
                specs.append(self._spec(connection, listed[name]))
            except ToolDefinitionError as exc:
                problem = f"MCP server {config.label!r}: {exc}"
                if strict:
                    raise McpLoadError(problem) from None
                self._log.log_error(problem + "; not offered")
        with self._lock:
            taken = self._names_in_use()
            kept = []
            for spec in specs:
                if spec.name in taken:
                    problem = (f"tool {spec.name!r} of MCP server {config.label!r} clashes with the tool of that name "
                               f"from {taken[spec.name]}; set tool_prefix on one of the servers")
                    if strict:
                        raise McpLoadError(problem)
                    self._log.log_error(problem + "; not offered")
                    continue
                kept.append(spec)
            self._offered[config.label] = tuple(kept)
            self._registry = ToolRegistry([*self.module_tools.values(),
                                           *(spec for c in self.servers for spec in self._offered.get(c.label, ()))])
        self._log.log_info(f"MCP server {config.label!r} ({config.transport}) is up: offering "
                           f"{[spec.name for spec in kept]} of {len(listed)} listed tools")
        self._report(config.label, True, "connected")

    def _server_down(self, connection: ServerConnection, event: str, error: str) -> None:
        connection.last_error = error
        label = connection.label
        if event == "lost":
            self._log.log_warn(f"MCP server {label!r} connection lost ({error}); reconnecting")
        elif label in self._offered or not self._loading or not connection.config.entry.required:
            self._log.log_warn(f"MCP server {label!r} unavailable ({error}); attempt {connection.attempts} failed, "
                               "retrying with backoff")
        self._report(label, False, event)

    def _report(self, label: str, up: bool, event: str) -> None:
        if self._on_state is not None:
            try:
                self._on_state(label, up, len(self._offered.get(label, ())), event)
            except Exception as exc:  # a metrics failure must not take the session down
                self._log.log_error(f"MCP server state hook failed: {exc!r}")

    def _compare_listing(self, config: ServerConfig, listed: dict) -> None:
        offered = {spec.remote_name for spec in self._offered[config.label]}
        added = sorted(name for name in set(listed) - offered if config.allows(name))
        gone = sorted(offered - set(listed))
        if added:
            self._log.log_warn(f"MCP server {config.label!r} now lists {added}; they are not offered (what a server "
                               "offers is fixed at its first listing; reload the model to take them)")
        if gone:
            self._log.log_warn(f"MCP server {config.label!r} no longer lists {gone}; their calls will fail")

    def _names_in_use(self) -> dict[str, str]:
        taken = {name: "the tool modules" for name in self.module_tools}
        for label, specs in self._offered.items():
            for spec in specs:
                taken[spec.name] = f"MCP server {label!r}"
        return taken

    def _check_declared_names(self) -> None:
        """Clashes visible in the file itself (explicit allowed_tools lists) fail before anything connects."""
        taken = {name: "the tool modules" for name in self.module_tools}
        for config in self.servers:
            if config.entry.allowed_tools == ALL_TOOLS:
                continue
            for tool in config.entry.allowed_tools:
                name = config.offered_name(tool)
                if name in taken:
                    raise McpLoadError(f"tool {name!r} of MCP server {config.label!r} clashes with the tool of that "
                                       f"name from {taken[name]}; set tool_prefix on one of the servers")
                taken[name] = f"MCP server {config.label!r}"

    def _spec(self, connection: ServerConnection, tool) -> McpToolSpec:
        config = connection.config
        schema = tool.input_schema if isinstance(tool.input_schema, dict) else dict(tool.input_schema or {})
        return McpToolSpec(
            name=config.offered_name(tool.name),
            description=(tool.description or tool.title or "").strip(),
            parameters=schema,
            fn=_caller(connection, tool.name),
            timeout_s=config.tool_timeout(tool.name),
            server=config.label,
            remote_name=tool.name,
        )


def _caller(connection: ServerConnection, remote_name: str):
    async def call_mcp_tool(**arguments):
        result = await connection.call(remote_name, arguments)
        return tool_result_value(result, label=connection.label, tool=remote_name)

    call_mcp_tool.__qualname__ = f"mcp:{connection.label}:{remote_name}"
    return call_mcp_tool

