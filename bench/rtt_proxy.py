"""A loopback TCP proxy that delays every chunk by a fixed one-way delay in each direction (order preserved).

Put it in front of Triton's gRPC port to add a client-server round-trip time without root (no netns/netem needed):
`DelayProxy("127.0.0.1", grpc_port, one_way_ms=10)` adds 20 ms to every request/response round trip. Each chunk read
from one side is written to the other side `one_way_ms` after it was read; bandwidth is not limited and chunks are
never reordered. It runs on its own asyncio loop in a daemon thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Optional

_CHUNK = 1 << 16


class DelayProxy:
    def __init__(self, target_host: str, target_port: int, one_way_ms: float, listen_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.delay_s = one_way_ms / 1000.0
        self.listen_host = listen_host
        self.port: Optional[int] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._server: Optional[asyncio.AbstractServer] = None
        self._thread: Optional[threading.Thread] = None
        self._ready = threading.Event()
        self._connections: set[asyncio.Task] = set()

    @property
    def address(self) -> str:
        return f"{self.listen_host}:{self.port}"

    def start(self) -> "DelayProxy":
        self._thread = threading.Thread(target=self._serve, name="delay-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self.port is None:
            raise RuntimeError("the delay proxy did not start")
        return self

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._accept, self.listen_host, 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            self._connections.discard(task)
            return
        pipes = [asyncio.ensure_future(self._pipe(client_reader, upstream_writer)),
                 asyncio.ensure_future(self._pipe(upstream_reader, client_writer))]
        try:
            await asyncio.wait(pipes)
        except asyncio.CancelledError:  # stop(): end quietly (asyncio logs a cancelled connection callback)
            pass
        finally:
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            for writer in (client_writer, upstream_writer):
                writer.close()
            self._connections.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        pending: asyncio.Queue = asyncio.Queue()

        async def read() -> None:
            while True:
                try:
                    data = await reader.read(_CHUNK)
                except (ConnectionError, OSError):
                    data = b""
                pending.put_nowait((loop.time() + self.delay_s, data))
                if not data:
                    return

        async def deliver() -> None:
            while True:
                due, data = await pending.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    with contextlib.suppress(OSError, RuntimeError):
                        if writer.can_write_eof():
                            writer.write_eof()
                    return
                try:
                    writer.write(data)
                    await writer.drain()
                except (ConnectionError, OSError):
                    return

        await asyncio.gather(read(), deliver())

    def stop(self) -> None:
        if self._loop is None:
            return

        async def shutdown() -> None:
            self._server.close()
            tasks = list(self._connections)
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=2)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> "DelayProxy":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
