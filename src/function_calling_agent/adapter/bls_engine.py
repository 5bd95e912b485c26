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
from typing import Any, Iterable, Optional

import numpy as np

from ..engine import EngineError, EngineOutput, EngineRequest
from .contract import SAMPLING_ENGINE_INPUTS

_END = object()
_OUTPUTS = ("output_ids", "prefix_reused_tokens")


def words_tensor(words: Iterable[Iterable[int]]) -> np.ndarray:
    """TRT-LLM word-list format [1, 2, L]: concatenated ids, then cumulative end offsets padded with -1."""
    flat: list[int] = []
    offsets: list[int] = []
    for word in words:
        flat.extend(word)
        offsets.append(len(flat))
    width = max(len(flat), 1)
    array = np.full((1, 2, width), -1, dtype=np.int32)
    array[0, 0, :] = 0
    array[0, 0, : len(flat)] = flat
    array[0, 1, : len(offsets)] = offsets
    return array


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
                 read_threads: int = 128, logger=None):
        self._pb = pb_utils
        self.model_name = model_name
        self.declared = frozenset(declared_inputs)
        self.outputs = [n for n in _OUTPUTS if n in set(declared_outputs) | {"output_ids"}]
        missing = {"input_ids", "input_lengths", "request_output_len"} - self.declared
        if missing:
            raise ValueError(f"engine model {model_name!r} lacks required inputs {sorted(missing)}")
        self.supports_bad_words = "bad_words_list" in self.declared
        self.stop_timeout_s = stop_timeout_s
        self._logger = logger
        self._reads = DaemonThreadPool(read_threads)
        self.finished_streams = IteratorKeeper()
        self.draining = 0  # streams being drained in the background after an early exit

    def _tensor(self, name: str, value: Any, dtype) -> Any:
        return self._pb.Tensor(name, np.array(value, dtype=dtype))

    def _inputs(self, request: EngineRequest) -> list:
        ids = np.asarray(request.prompt_ids, dtype=np.int32).reshape(1, -1)
        tensors = [
            self._pb.Tensor("input_ids", ids),
            self._tensor("input_lengths", [[ids.shape[1]]], np.int32),
            self._tensor("request_output_len", [[request.max_tokens]], np.int32),
        ]
        optional = {
            "end_id": ([[request.end_id]], np.int32),
            "pad_id": ([[request.pad_id]], np.int32),
            "streaming": ([[True]], np.bool_),
            "exclude_input_in_output": ([[True]], np.bool_),
            "return_perf_metrics": ([[True]], np.bool_),
        }
        for name, (value, dtype) in optional.items():
            if name in self.declared:
                tensors.append(self._tensor(name, value, dtype))
        dtypes = {"top_k": np.int32, "random_seed": np.uint64}
        for client_name, value in request.sampling.given().items():
            engine_name = next(n for n in SAMPLING_ENGINE_INPUTS[client_name] if n in self.declared)
            tensors.append(self._tensor(engine_name, [[value]], dtypes.get(client_name, np.float32)))
        if request.bad_words and self.supports_bad_words:
            tensors.append(self._pb.Tensor("bad_words_list", words_tensor(request.bad_words)))
        if request.stop_words and "stop_words_list" in self.declared:
            tensors.append(self._pb.Tensor("stop_words_list", words_tensor(request.stop_words)))
        return tensors

    async def generate(self, request: EngineRequest):
        if "streaming" not in self.declared:
            raise EngineError(f"engine model {self.model_name!r} does not declare a streaming input")
        infer = self._pb.InferenceRequest(
            model_name=self.model_name, inputs=self._inputs(request),
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
                ids = self._pb.get_output_tensor_by_name(response, "output_ids")
                if ids is None:  # a trailing empty FINAL response
                    continue
                array = ids.as_numpy()
                # Streaming responses hold only the new ids: [batch, beam, new] with one beam.
                flat = array[0, 0] if array.ndim == 3 else array.reshape(-1)
                reused = self._reused_prompt_tokens(response)
                if flat.size or reused is not None:
                    yield EngineOutput(tuple(flat.tolist()), reused)
        finally:
            if not exhausted:
                self._drain_in_background(iterator, request.request_id, reading)

    def _reused_prompt_tokens(self, response) -> Optional[int]:
        reused = self._pb.get_output_tensor_by_name(response, "prefix_reused_tokens")
        return None if reused is None else int(reused.as_numpy().reshape(-1)[0])

    def _drain_orphan(self, call: "asyncio.Future", request_id: str) -> None:
        """Drains the stream of a call whose caller was cancelled before the call returned."""
        if not call.cancelled() and call.exception() is None:
            self._drain_in_background(iter(call.result()), request_id)

    def _drain_in_background(self, iterator, request_id: str,
                             reading: Optional[concurrent.futures.Future] = None) -> None:
        """Consumes what is left of an abandoned stream so the engine's responses are released, within a bound.

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
                for _ in iterator:
                    if time.monotonic() > deadline:
                        self._log_warn(f"engine stream {request_id} still open {self.stop_timeout_s:g} s after stop")
                        break
                else:
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
            inputs=[
                self._tensor("input_ids", [[0]], np.int32),
                self._tensor("input_lengths", [[1]], np.int32),
                self._tensor("request_output_len", [[0]], np.int32),
                self._tensor("stop", [[True]], np.bool_),
            ],
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

