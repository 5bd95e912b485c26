"""BlsEngineClient against a stand-in for the Python backend's BLS objects (no server needed).

The stand-in enforces what Triton 2.51's ResponseIterator needs but does not check itself: one consumer at a time.
Two threads in its Next() deadlock the stub (mutex taken under the GIL, GIL retaken under the mutex); the soak found
that when a client cancel abandoned a stream while a read was still blocked and the drain began reading beside it.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref

import numpy as np
import pytest

from function_calling_agent.adapter.bls_engine import BlsEngineClient, IteratorKeeper
from function_calling_agent.adapter.engine_tensors import words_tensor
from function_calling_agent.engine import EngineError, EngineRequest, SamplingParams

INPUTS = ("input_ids", "input_lengths", "request_output_len", "streaming", "end_id", "stop")


class _Tensor:
    def __init__(self, name, array):
        self.name, self.array = name, np.asarray(array)

    def as_numpy(self):
        return self.array


class _Response:
    def __init__(self, ids=None, error=None):
        self.ids, self.message = ids, error

    def has_error(self):
        return self.message is not None

    def error(self):
        message = self.message
        return type("Err", (), {"message": lambda self: message})()


class SingleConsumerStream:
    """A BLS response stream that hands out responses only when the test releases them, and records overlap."""

    def __init__(self, responses):
        self._responses = list(responses)
        self._released = threading.Semaphore(0)
        self._guard = threading.Lock()
        self.inside = threading.Event()  # a consumer is blocked in __next__
        self.overlaps = 0
        self.reads = 0
        self.finished = threading.Event()

    def release(self, count=1):
        for _ in range(count):
            self._released.release()

    def __iter__(self):
        return self

    def __next__(self):
        if not self._guard.acquire(blocking=False):
            self.overlaps += 1
            raise AssertionError("two consumers in ResponseIterator.Next()")
        try:
            if not self._responses:
                self.finished.set()
                raise StopIteration
            self.inside.set()
            self._released.acquire()
            self.inside.clear()
            self.reads += 1
            return self._responses.pop(0)
        finally:
            self._guard.release()


class FakePb:
    def __init__(self, stream):
        self.stream = stream
        self.requests = []
        self.exec_delay_s = 0.0  # how long async_exec takes to hand back the stream

    def Tensor(self, name, array):
        return _Tensor(name, array)

    def InferenceRequest(self, model_name, inputs, requested_output_names, request_id):
        fake = self

        class _Request:
            def __init__(self):
                self.inputs = {t.name: t.as_numpy() for t in inputs}
                fake.requests.append(self)

            async def async_exec(self, decoupled):
                assert decoupled
                await asyncio.sleep(fake.exec_delay_s)
                return fake.stream

            def exec(self, decoupled):
                return iter([_Response()])

        return _Request()

    @staticmethod
    def get_output_tensor_by_name(response, name):
        if name == "output_ids" and response.ids is not None:
            return _Tensor(name, np.array([[response.ids]], dtype=np.int32))
        return None


def _request():
    return EngineRequest(request_id="r1", prompt_ids=[1, 2, 3], max_tokens=8, sampling=SamplingParams(), end_id=2,
                         pad_id=2)


def _client(stream):
    pb = FakePb(stream)
    return pb, BlsEngineClient(pb, "tensorrt_llm", INPUTS, stop_timeout_s=5.0, read_threads=8)


def _wait(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_streams_ids_and_sends_the_engine_inputs():
    stream = SingleConsumerStream([_Response([5]), _Response([6, 7]), _Response(None)])
    pb, client = _client(stream)
    stream.release(3)

    async def main():
        return [list(chunk.token_ids) async for chunk in client.generate(_request())]

    assert asyncio.run(main()) == [[5], [6, 7]]
    assert len(client.finished_streams) == 1  # held past the stub's cleanup of the finished stream
    sent = pb.requests[0].inputs
    assert sent["input_ids"].tolist() == [[1, 2, 3]] and sent["input_lengths"].tolist() == [[3]]
    assert sent["streaming"].tolist() == [[True]] and sent["end_id"].tolist() == [[2]]
    assert client.draining == 0 and stream.overlaps == 0


def test_engine_error_response_becomes_engine_error():
    stream = SingleConsumerStream([_Response([5]), _Response(error="boom")])
    _, client = _client(stream)
    stream.release(2)

    async def main():
        async for _ in client.generate(_request()):
            pass

    with pytest.raises(EngineError, match="boom"):
        asyncio.run(main())


async def _cancel_second_read(client, in_flight):
    """Reads the first chunk, starts the next read, and cancels it (a client cancel) once `in_flight()` holds."""
    generator = client.generate(_request())
    assert (await generator.__anext__()).token_ids == (5,)
    pending = asyncio.ensure_future(generator.__anext__())
    await asyncio.to_thread(_wait, in_flight)
    pending.cancel()
    return generator, pending


def test_abandoning_a_stream_mid_read_never_adds_a_second_consumer():
    stream = SingleConsumerStream([_Response([5]), _Response([6]), _Response([7]), _Response(None)])
    _, client = _client(stream)
    stream.release(1)

    async def main():
        # The next read is blocked inside the iterator: it is still in flight when the drain starts.
        generator, pending = await _cancel_second_read(client, stream.inside.is_set)
        with pytest.raises(asyncio.CancelledError):
            await pending
        await generator.aclose()

    asyncio.run(main())
    time.sleep(0.05)  # an overlapping drain would have entered __next__ by now
    assert stream.overlaps == 0
    assert client.draining == 1  # waiting for the read in flight, not reading
    stream.release(3)
    _wait(lambda: client.draining == 0)
    assert stream.overlaps == 0
    assert stream.reads == 4 and stream.finished.is_set()  # the drain consumed the rest of the stream
    assert len(client.finished_streams) == 1


def test_a_drain_past_the_stop_timeout_still_reads_to_the_end():
    # On a busy machine the engine may honour `stop` late. Giving up on the stream would leave it in the stub's
    # iterator map, which deadlocks the stub's unload (Triton 2.51): the drain warns once and reads on.
    stream = SingleConsumerStream([_Response([5]), _Response([6]), _Response([7]), _Response(None)])
    pb = FakePb(stream)
    warnings = []
    logger = type("Logger", (), {"log_warn": lambda self, message: warnings.append(message)})()
    client = BlsEngineClient(pb, "tensorrt_llm", INPUTS, stop_timeout_s=0.1, read_threads=8, logger=logger)
    stream.release(2)

    async def main():
        generator, pending = await _cancel_second_read(client, lambda: stream.reads == 2)
        try:
            await pending
        except asyncio.CancelledError:
            pass
        await generator.aclose()

    asyncio.run(main())
    time.sleep(0.3)  # past the stop timeout, with the stream still open
    assert client.draining == 1 and not stream.finished.is_set()
    stream.release(2)
    _wait(lambda: client.draining == 0)
    assert stream.finished.is_set() and stream.reads == 4 and stream.overlaps == 0
    assert len(client.finished_streams) == 1
    assert len(warnings) == 1 and "reading it to its end" in warnings[0]


def test_a_cancel_during_the_call_still_drains_the_stream_it_returns():
    # Unread, the stream would keep every response in the stub and deadlock the stub's unload (Triton 2.51).
    stream = SingleConsumerStream([_Response([5]), _Response(None)])
    pb, client = _client(stream)
    pb.exec_delay_s = 0.2
    stream.release(2)

    async def main():
        generator = client.generate(_request())
        pending = asyncio.ensure_future(generator.__anext__())
        await asyncio.sleep(0.05)  # the call is under way
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        await asyncio.sleep(0.3)  # the call returns after its caller has gone

    asyncio.run(main())
    _wait(lambda: stream.finished.is_set() and client.draining == 0)
    assert stream.reads == 2 and stream.overlaps == 0
    assert len(client.finished_streams) == 1


def test_drain_stops_after_a_read_that_ended_the_stream():
    stream = SingleConsumerStream([_Response([5])])
    _, client = _client(stream)
    stream.release(1)

    async def main():
        generator, pending = await _cancel_second_read(client, stream.finished.is_set)
        try:
            await pending
        except (asyncio.CancelledError, StopAsyncIteration):
            pass
        await generator.aclose()

    asyncio.run(main())
    _wait(lambda: client.draining == 0)
    assert stream.overlaps == 0


def test_words_tensor_layout():
    array = words_tensor([[7, 8], [9]])
    assert array.shape == (1, 2, 3)
    assert array[0, 0].tolist() == [7, 8, 9] and array[0, 1].tolist() == [2, 3, -1]


def test_keeper_holds_finished_iterators_for_the_grace_period_then_lets_go():
    class Stream:
        pass

    keeper = IteratorKeeper(grace_s=1.0)  # long enough that a busy machine cannot stall past it between two lines
    first = Stream()
    ref = weakref.ref(first)
    keeper.keep(first)
    del first
    keeper.keep(Stream())
    assert ref() is not None and len(keeper) == 2  # within the grace period nothing is dropped
    time.sleep(1.05)
    keeper.keep(Stream())  # the next keep releases what has expired, in the caller's (GIL-holding) thread
    assert ref() is None and len(keeper) == 1
