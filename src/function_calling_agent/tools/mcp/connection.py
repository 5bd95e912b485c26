"""One MCP server's client session, kept alive on the toolbox's event loop and shared by every request.

Why a loop of its own: the SDK's sessions live inside anyio task groups and cancel scopes, which belong to the task
that entered them. Triton runs each `execute` as a coroutine of the stub's loop, and requests come and go, so no
request can own a session. Instead a supervisor task on the toolbox's loop thread opens the session, lists the tools,
and holds the session open until it is lost; requests submit their calls to that loop
(`asyncio.run_coroutine_threadsafe`), where each call is its own task. Cancelling the request's await (a timeout, a
client cancel) cancels that task, and the SDK tells the server (`notifications/cancelled`).

The supervisor's cycle: connect (bounded by `connect_timeout_seconds`), list tools, hand the listing to the toolbox,
then watch: a call that finds the connection closed, a transport failure, or a liveness probe every
`health_check_seconds` that gets no answer ends the session; the next attempt follows with exponential backoff
(0.1 s after a lost session, then 0.25 s doubling to 30 s while attempts fail).
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import contextlib
import sys
from typing import Any, Callable, Optional

from ..registry import ToolError
from .config import ServerConfig, StdioServer

CONNECTING, UP, DOWN, CLOSED = "connecting", "up", "down", "closed"
FIRST_RETRY_S = 0.1
BACKOFF_START_S = 0.25
BACKOFF_MAX_S = 30.0
MAX_LIST_PAGES = 100
PROBE_TIMEOUT_S = 10.0


def backoff_delay(failures: int) -> float:
    """Seconds before the next attempt after `failures` failed attempts in a row (0: the session was just lost)."""
    if failures <= 0:
        return FIRST_RETRY_S
    return min(BACKOFF_MAX_S, BACKOFF_START_S * 2 ** (failures - 1))


# anyio raises exception groups from task groups (builtin from Python 3.11, the exceptiongroup backport before).
_GROUP = getattr(builtins, "BaseExceptionGroup", None) or __import__("exceptiongroup").BaseExceptionGroup


def describe_error(exc: BaseException) -> str:
    """One line for an exception, unwrapping the exception groups anyio raises from task groups."""
    while isinstance(exc, _GROUP) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]


class ServerConnection:
    """The session with one server. Runs on `loop`; `call` may be awaited from any other event loop.

    `on_up(connection, tools)` runs on the loop after each successful listing (the first and every reconnect);
    `on_down(connection, event, error)` after each failed attempt (`event` "failed") or lost session ("lost").
    """

    def __init__(self, config: ServerConfig, loop: asyncio.AbstractEventLoop, *,
                 on_up: Callable[["ServerConnection", list], None],
                 on_down: Callable[["ServerConnection", str, str], None]):
        self.config = config
        self.label = config.label
        self._loop = loop
        self._on_up = on_up
        self._on_down = on_down
        self.state = CONNECTING
        self.last_error = ""
        self.attempts = 0
        self._client = None
        self._lost: Optional[asyncio.Event] = None
        self._lost_reason = ""
        self._changed: Optional[asyncio.Event] = None  # set and replaced on every state change (loop only)
        # Resolved once: by the first successful listing (with None) or the first failed attempt (with the error).
        self.first_outcome: concurrent.futures.Future = concurrent.futures.Future()

    # -- the supervisor (loop thread) ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Connects, and reconnects with backoff, until cancelled."""
        failures = 0
        self._changed = asyncio.Event()
        try:
            while True:
                self._set_state(CONNECTING)
                up, error = await self._attempt()
                if up:
                    failures = 0
                    self._set_state(CONNECTING)  # calls wait for the immediate retry instead of failing at once
                    self._on_down(self, "lost", error)
                else:
                    failures += 1
                    self._set_state(DOWN)
                    self._on_down(self, "failed", error)
                    if not self.first_outcome.done():
                        self.first_outcome.set_result(error)
                await asyncio.sleep(backoff_delay(failures))
        finally:
            self._set_state(CLOSED)

    async def _attempt(self) -> tuple[bool, str]:
        """One session from connect to loss. Returns (whether it came up, why it ended or failed)."""
        self.attempts += 1
        ready: asyncio.Future = self._loop.create_future()
        session = asyncio.ensure_future(self._session(ready))
        try:
            await asyncio.wait({session, ready}, timeout=self.config.entry.connect_timeout_seconds,
                               return_when=asyncio.FIRST_COMPLETED)
            if not ready.done():
                if not session.done():
                    session.cancel()
                    await asyncio.wait({session})
                    return False, f"no answer within {self.config.entry.connect_timeout_seconds:g} s"
                return False, self._ended(session)
            await asyncio.wait({session})
            return True, self._ended(session)
        except asyncio.CancelledError:
            session.cancel()
            await asyncio.wait({session})
            raise
        finally:
            self._client = None

    def _ended(self, session: asyncio.Task) -> str:
        if session.cancelled():
            return "the session was cancelled"
        exc = session.exception()
        if exc is not None:
            return describe_error(exc)
        return self._lost_reason or "the server closed the connection"

    async def _session(self, ready: asyncio.Future) -> None:
        from mcp import Client
        from mcp.types import Implementation

        client_info = Implementation(name="function_calling_agent", version="1")
        async with Client(self._transport(), cache=None, client_info=client_info) as client:
            tools = await list_all_tools(client)
            self._lost, self._lost_reason = asyncio.Event(), ""
            self._client = client
            self._on_up(self, tools)  # raises if the listing is unusable (a required server at load)
            self._set_state(UP)
            if not self.first_outcome.done():
                self.first_outcome.set_result(None)
            ready.set_result(True)
            try:
                await self._watch(client)
            finally:
                self._client = None  # new calls wait for the next session instead of using this one

    def _transport(self):
        entry = self.config.entry
        if isinstance(entry, StdioServer):
            from mcp.client.stdio import StdioServerParameters, stdio_client

            parameters = StdioServerParameters(command=entry.command, args=list(entry.args),
                                               env=dict(self.config.env) or None, cwd=entry.cwd)
            return stdio_client(parameters, errlog=sys.stderr)
        return _http_transport(entry.url, dict(self.config.headers))

    async def _watch(self, client) -> None:
        """Returns when the session is lost; probes an idle connection every `health_check_seconds`.

        The probe lists tools: every server answers tools/list, whereas ping is gone from the 2026-07-28 protocol.
        """
        from mcp.shared.exceptions import MCPError
        from mcp.types import CONNECTION_CLOSED

        interval = self.config.entry.health_check_seconds or None
        lost = self._lost
        while True:
            try:
                await asyncio.wait_for(lost.wait(), interval)
                return
            except asyncio.TimeoutError:
                pass
            try:
                await asyncio.wait_for(client.list_tools(), PROBE_TIMEOUT_S)
            except MCPError as exc:
                if exc.code == CONNECTION_CLOSED:
                    self._lost_reason = "the connection closed"
                    return
                # Any other JSON-RPC answer still proves the server alive.
            except asyncio.TimeoutError:
                self._lost_reason = f"no answer to a liveness probe within {PROBE_TIMEOUT_S:g} s"
                return

    def _set_state(self, state: str) -> None:
        self.state = state
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    # -- calls --------------------------------------------------------------------------------------------------
    async def call(self, tool: str, arguments: dict) -> Any:
        """Calls `tool` (the server's name) from any event loop; returns the SDK's `CallToolResult`.

        Raises `ToolError` (for the model) when the server is unavailable or fails the call; cancelling the await
        cancels the call on the server.
        """
        future = asyncio.run_coroutine_threadsafe(self._call_on_loop(tool, arguments), self._loop)
        return await asyncio.wrap_future(future)

    async def _call_on_loop(self, tool: str, arguments: dict):
        from mcp.shared.exceptions import MCPError
        from mcp.types import CONNECTION_CLOSED

        while self._client is None:
            if self.state in (DOWN, CLOSED):
                raise ToolError(f"the MCP server {self.label!r} is unavailable ({self.last_error}); it is retried in "
                                "the background, try again later")
            await self._changed.wait()  # reconnecting: the caller's timeout bounds the wait
        client, lost = self._client, self._lost
        try:
            return await client.call_tool(tool, arguments)
        except MCPError as exc:
            if exc.code == CONNECTION_CLOSED:
                if self._client is client:
                    self._client = None  # later calls wait for the reconnect
                    self._lost_reason = f"the connection closed during a call of {tool!r}"
                lost.set()
                raise ToolError(f"the MCP server {self.label!r} closed the connection during the call, so its result "
                                "is unknown (the call may or may not have taken effect); it is being reconnected"
                                ) from None
            raise ToolError(f"the MCP server {self.label!r} answered {tool!r} with an error: {exc.message}") from None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a result that breaks the protocol (schema, validation): the model hears it
            raise ToolError(f"the MCP server {self.label!r} failed the call of {tool!r}: {describe_error(exc)}"
                            ) from None


async def list_all_tools(client) -> list:
    """Every tool the server lists, following `nextCursor` (at most MAX_LIST_PAGES pages)."""
    tools: list = []
    cursor = None
    for _ in range(MAX_LIST_PAGES):
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            break
    return tools


@contextlib.asynccontextmanager
async def _http_transport(url: str, headers: dict[str, str]):
    """Streamable HTTP with the configured headers; the SDK leaves a client it is given to its owner to close."""
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    # The SDK's defaults: 30 s to connect/write, 300 s to read (a response stream may stay open).
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=300.0)) as http:
        async with streamable_http_client(url, http_client=http) as streams:
            yield streams
