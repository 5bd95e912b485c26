"""The agent's EngineClient over Triton BLS calls to a model that speaks the `tensorrt_llm` contract.

`pb_utils` (the Python backend's module) is passed in, so this file stays importable without Triton.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import queue
import threading
import time
from typing import Iterable, Optional


from ..engine import EngineError, EngineRequest
from .engine_tensors import check_required, engine_inputs, engine_output, requested_outputs, stop_inputs

_END = object()


class DaemonThreadPool(concurrent.futures.Executor):
    """Threads for blocking BLS reads that can never keep the model process from exiting.

    Triton <= 25.03 never delivers a decoupled BLS error that follows streamed responses, so a read can block
    forever; on the default executor (non-daemon threads) that thread would also block the stub's shutdown.
    A task is handed to an idle thread, else to a new one (up to `max_workers`), so a blocked read never
    holds up another.
    """

    def __init__(self, max_workers: int, name: str = "bls-read"):
        self._max_workers = max_workers
        self._name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0

    def submit(self, fn, /, *args, **kwargs):
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self._idle:
                self._idle -= 1
            elif self._threads < self._max_workers:
                self._threads += 1
                threading.Thread(target=self._work, name=f"{self._name}-{self._threads}", daemon=True).start()
        self._queue.put((future, fn, args, kwargs))
        return future

    def _work(self) -> None:
        while True:
            future, fn, args, kwargs = self._queue.get()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as exc:
                    future.set_exception(exc)
            with self._lock:
                self._idle += 1


class IteratorKeeper:
    """Holds finished BLS response iterators for a grace period, then lets them go from a thread that holds the GIL.

    When an iterator has read its FINAL response, Triton's stub queues a cleanup that later drops the stub's own
    reference from its service thread, without the GIL. If Python had already dropped the iterator, that thread frees
    every response's numpy arrays unsafely and corrupts the heap (Triton <= 24.11; seen here as SIGSEGV in pymalloc
    about once per 20,000 requests). Keeping Python's reference until the cleanup has surely run avoids it. Only
    finished iterators may be kept: dropping an unfinished one blocks the dropping thread until its stream ends.
    """

    def __init__(self, grace_s: float = 3.0):
        self.grace_s = grace_s
        self._held: collections.deque = collections.deque()
        self._lock = threading.Lock()

    def keep(self, iterator) -> None:
        now = time.monotonic()
        expired = []
        with self._lock:
            self._held.append((now + self.grace_s, iterator))
            while self._held[0][0] <= now:
                expired.append(self._held.popleft()[1])
        expired.clear()  # the last references go here, outside the lock

    def __len__(self) -> int:
        return len(self._held)


class BlsEngineClient:
    def __init__(self, pb_utils, model_name: str, declared_inputs: Iterable[str],
                 declared_outputs: Iterable[str] = ("output_ids",), *, stop_timeout_s: float = 5.0,
                 read_threads: int = 128, logger=None, tokens_per_block: Optional[int] = None):
        self._pb = pb_utils
        self.model_name = model_name
        self.declared = frozenset(declared_inputs)
        self.outputs = requested_outputs(declared_outputs)
        check_required(model_name, self.declared)
        self.supports_bad_words = "bad_words_list" in self.declared
        self.tokens_per_block = tokens_per_block
        self.stop_timeout_s = stop_timeout_s
        self._logger = logger
        self._reads = DaemonThreadPool(read_threads)
        self.finished_streams = IteratorKeeper()
        self.draining = 0  # streams being drained in the background after an early exit

    def _tensors(self, arrays: dict) -> list:
        return [self._pb.Tensor(name, array) for name, array in arrays.items()]

    async def generate(self, request: EngineRequest):
        if "streaming" not in self.declared:
            raise EngineError(f"engine model {self.model_name!r} does not declare a streaming input")
        infer = self._pb.InferenceRequest(
            model_name=self.model_name, inputs=self._tensors(engine_inputs(request, self.declared)),
            requested_output_names=self.outputs,
            request_id=request.request_id,
        )
        loop = asyncio.get_running_loop()
        calling = asyncio.ensure_future(infer.async_exec(decoupled=True))
        try:
            # Shielded: a cancel while the call is under way must not orphan the stream it returns. An unread stream
            # keeps every response in the stub and, left in the stub's iterator map, deadlocks the stub at unload.
            responses = await asyncio.shield(calling)
        except asyncio.CancelledError:
            calling.add_done_callback(lambda done: self._drain_orphan(done, request.request_id))
            raise
        except Exception as exc:
            raise EngineError(f"engine model {self.model_name!r} could not be called: {exc}") from exc
        iterator = iter(responses)
        exhausted = False
        reading: Optional[concurrent.futures.Future] = None
        try:
            while True:
                # One consumer at a time: 2.51's ResponseIterator.Next() locks its mutex while holding the GIL and
                # takes the GIL back while holding the mutex, so two threads in Next() on one stream deadlock the
                # whole stub (and race on the iterator's Clear()). A read cancelled by an early exit may still be
                # blocked in Next(); the drain below waits for it before it reads on.
                reading = self._reads.submit(next, iterator, _END)
                response = await asyncio.wrap_future(reading, loop=loop)
                reading = None
                if response is _END:
                    exhausted = True
                    self.finished_streams.keep(iterator)
                    return
                if response.has_error():
                    raise EngineError(f"engine model {self.model_name!r} failed: {response.error().message()}")
                output = engine_output(lambda name: _array(self._pb, response, name),
                                       tokens_per_block=self.tokens_per_block, prompt_tokens=len(request.prompt_ids))
                if output is not None and (output.token_ids or output.reused_prompt_tokens is not None):
                    yield output
        finally:
            if not exhausted:
                self._drain_in_background(iterator, request.request_id, reading)

    def _drain_orphan(self, call: "asyncio.Future", request_id: str) -> None:
        """Drains the stream of a call whose caller was cancelled before the call returned."""
        if not call.cancelled() and call.exception() is None:
            self._drain_in_background(iter(call.result()), request_id)

    def _drain_in_background(self, iterator, request_id: str,
                             reading: Optional[concurrent.futures.Future] = None) -> None:
        """Consumes what is left of an abandoned stream, to its end, so the engine's responses are released.

        `reading` is the read that was in flight when the stream was abandoned: the drain starts only once it is
        over, so the iterator never has two consumers.
        """
        self.draining += 1
        deadline = time.monotonic() + self.stop_timeout_s

        def drain():
            try:
                if reading is not None:
                    concurrent.futures.wait([reading])  # never raises; a read cancelled before it ran is done too
                    if not reading.cancelled() and reading.exception() is None and reading.result() is _END:
                        self.finished_streams.keep(iterator)
                        return
                warned = False
                for _ in iterator:
                    # Read on to the end however long it takes (the engine ends it at max_tokens at the latest): a
                    # stream left unread stays in the stub's iterator map and deadlocks the stub at unload.
                    if not warned and time.monotonic() > deadline:
                        warned = True
                        self._log_warn(f"engine stream {request_id} still open {self.stop_timeout_s:g} s after stop; "
                                       "reading it to its end")
                self.finished_streams.keep(iterator)
            except Exception:
                pass
            finally:
                self.draining -= 1

        threading.Thread(target=drain, name=f"drain:{request_id}", daemon=True).start()

    async def stop(self, request_id: str) -> None:
        """TRT-LLM's stop request: same request id, `stop=true`, dummy inputs (2.51's iterator has no cancel())."""
        if "stop" not in self.declared:
            return
        infer = self._pb.InferenceRequest(
            model_name=self.model_name,
            inputs=self._tensors(stop_inputs()),
            requested_output_names=["output_ids"],
            request_id=request_id,
        )

        def send():
            responses = infer.exec(decoupled=True)
            for response in responses:
                if response.has_error():
                    self._log_warn(f"stop request for {request_id} failed: {response.error().message()}")
            self.finished_streams.keep(responses)

        try:
            await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(self._reads, send), self.stop_timeout_s)
        except Exception as exc:
            self._log_warn(f"stop request for {request_id} did not complete: {exc}")

    def _log_warn(self, message: str) -> None:
        if self._logger is not None:
            self._logger.log_warn(message)


def _array(pb_utils, response, name: str):
    tensor = pb_utils.get_output_tensor_by_name(response, name)
    return None if tensor is None else tensor.as_numpy()
