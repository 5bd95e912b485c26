"""Running validated tool calls: concurrently, each under a timeout, on threads the agent owns.

Python cannot kill a thread, so a tool that hangs past its timeout is abandoned: its caller gets a timeout error at
once, the worker slot is freed, and the thread is counted until it returns. Each tool may have at most
`max_abandoned` threads alive (running or abandoned); past that its calls fail fast with an error the model can relay,
so one hanging tool can neither pile up threads nor starve the other tools.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import queue
import threading
import time
from typing import Any, Optional

from .spec import ToolSpec, ToolStatus


class ToolCapacityError(RuntimeError):
    pass


@dataclasses.dataclass
class ToolOutcome:
    status: ToolStatus
    value: Any = None  # the tool's return value when status is OK
    error: Optional[str] = None  # message for the model otherwise
    latency_s: float = 0.0


class ToolExecutor:
    def __init__(self, max_concurrent: int = 32, max_abandoned: int = 64):
        if max_concurrent < 1 or max_abandoned < 0:
            raise ValueError("max_concurrent must be >= 1 and max_abandoned >= 0")
        self.max_concurrent = max_concurrent
        self.max_abandoned = max_abandoned
        self._lock = threading.Lock()
        self._running = 0
        self._abandoned = 0
        self._alive_by_tool: dict[str, int] = {}
        self._slots: Optional[asyncio.Semaphore] = None
        self._slots_loop = None
        self._workers = _Workers(max_idle=max_concurrent)

    @property
    def running(self) -> int:
        return self._running

    @property
    def abandoned(self) -> int:
        """Threads of timed-out or cancelled calls that have not returned yet."""
        return self._abandoned

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots_loop is not loop:
            self._slots, self._slots_loop = asyncio.Semaphore(self.max_concurrent), loop
        return self._slots

    async def run(self, spec: ToolSpec, kwargs: dict, timeout_s: float) -> ToolOutcome:
        """Runs one call; never raises except CancelledError (after abandoning the call)."""
        start = time.monotonic()
        if timeout_s <= 0:
            return ToolOutcome(ToolStatus.TIMEOUT, error="no time was left for this tool call before the deadline")
        try:
            value = await wait_with_timeout(self._call(spec, kwargs), timeout_s)
            return ToolOutcome(ToolStatus.OK, value=value, latency_s=time.monotonic() - start)
        except asyncio.TimeoutError:
            return ToolOutcome(ToolStatus.TIMEOUT, error=f"the tool {spec.name!r} did not finish within {timeout_s:g} s",
                               latency_s=time.monotonic() - start)
        except ToolCapacityError as exc:
            return ToolOutcome(ToolStatus.ERROR, error=str(exc), latency_s=time.monotonic() - start)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the tool's own failure is the model's to read
            message = str(exc) or type(exc).__name__
            return ToolOutcome(ToolStatus.ERROR, error=f"{type(exc).__name__}: {message}"[:1000],
                               latency_s=time.monotonic() - start)

    async def _call(self, spec: ToolSpec, kwargs: dict) -> Any:
        if inspect.iscoroutinefunction(spec.fn):
            return await spec.fn(**kwargs)
        async with self._semaphore():
            return await self._in_thread(spec, kwargs)

    async def _in_thread(self, spec: ToolSpec, kwargs: dict) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        state = {"abandoned": False, "finished": False}

        def deliver(value, error):
            if not future.done():
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(value)

        def target():
            value, error = None, None
            try:
                value = spec.fn(**kwargs)
            except BaseException as exc:  # delivered to the awaiting coroutine
                error = exc
            with self._lock:
                self._running -= 1
                self._alive_by_tool[spec.name] -= 1
                state["finished"] = True
                if state["abandoned"]:
                    self._abandoned -= 1
                    return
            try:
                loop.call_soon_threadsafe(deliver, value, error)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

        with self._lock:
            alive = self._alive_by_tool.get(spec.name, 0)
            if alive >= max(self.max_abandoned, 1):
                raise ToolCapacityError(
                    f"the tool {spec.name!r} is at capacity: {alive} calls are still running, some past their "
                    "timeout; try again later")
            self._alive_by_tool[spec.name] = alive + 1
            self._running += 1
        self._workers.start(target, f"tool:{spec.name}")
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            with self._lock:
                if not state["finished"] and not state["abandoned"]:
                    # Still running: from now on it only counts against the abandoned cap.
                    state["abandoned"] = True
                    self._abandoned += 1
            raise


class _Workers:
    """Daemon threads reused across calls: starting a thread costs a few hundred microseconds (Thread.start waits for
    it to run), paid on every tool call otherwise. A job goes to an idle thread, else to a new one, so a call never
    waits for another; a thread whose call was abandoned rejoins the idle ones when the call returns."""

    def __init__(self, max_idle: int):
        self._max_idle = max_idle
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0

    def start(self, job, name: str) -> None:
        with self._lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1
        self._jobs.put((job, name))
        if spawn:
            threading.Thread(target=self._work, name=name, daemon=True).start()

    def _work(self) -> None:
        while True:
            job, name = self._jobs.get()
            threading.current_thread().name = name
            job()
            with self._lock:
                if self._idle >= self._max_idle:
                    return
                self._idle += 1


async def wait_with_timeout(awaitable, timeout: float):
    """Like asyncio.wait_for, but a cancellation that arrives with the result is never lost (Python <= 3.11)."""
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        raise asyncio.TimeoutError
    return task.result()
