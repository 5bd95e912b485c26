"""ToolExecutor: concurrent calls, timeouts, errors for the model, abandoned threads and their cap, async tools."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from function_calling_agent.tools.execution import ToolExecutor
from function_calling_agent.tools.spec import ToolSpec, ToolStatus

NO_PARAMS = {"type": "object", "properties": {}}


def spec(fn, name="t", timeout_s=None) -> ToolSpec:
    return ToolSpec(name=name, description="Test tool.", parameters=NO_PARAMS, fn=fn, timeout_s=timeout_s)


def run(coro):
    return asyncio.run(coro)


def wait_until(predicate, timeout_s=10.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.fixture
def release():
    """An event hung tools wait on; set at teardown so no test leaves a thread behind."""
    event = threading.Event()
    yield event
    event.set()


def test_value_and_latency_of_a_sync_tool():
    def price(*, symbol):
        return {"symbol": symbol, "thread": threading.current_thread().name}

    outcome = run(ToolExecutor().run(spec(price, "price"), {"symbol": "RIVN"}, 5.0))
    assert outcome.status is ToolStatus.OK and outcome.error is None
    assert outcome.value == {"symbol": "RIVN", "thread": "tool:price"}  # called with keywords, on its own thread
    assert 0 <= outcome.latency_s < 1


def test_calls_run_concurrently():
    # Both calls must be running at once to pass the barrier; one after another, it breaks after 5 s and they fail.
    executor = ToolExecutor()
    together = threading.Barrier(2, timeout=5)

    def meet():
        together.wait()
        return "done"

    async def both():
        return await asyncio.gather(executor.run(spec(meet), {}, 10.0), executor.run(spec(meet), {}, 10.0))

    outcomes = run(both())
    assert [(o.status, o.value) for o in outcomes] == [(ToolStatus.OK, "done")] * 2


def test_max_concurrent_limits_parallel_threads():
    executor = ToolExecutor(max_concurrent=1)
    seen = []

    def tool():
        seen.append(executor.running)
        time.sleep(0.15)

    async def both():
        return await asyncio.gather(executor.run(spec(tool), {}, 5.0), executor.run(spec(tool), {}, 5.0))

    start = time.monotonic()
    run(both())
    assert time.monotonic() - start >= 0.29
    assert seen == [1, 1]


def test_exception_becomes_an_error_the_model_can_read():
    def broken():
        raise ValueError("no such symbol: XYZ")

    outcome = run(ToolExecutor().run(spec(broken), {}, 5.0))
    assert outcome.status is ToolStatus.ERROR
    assert outcome.error == "ValueError: no such symbol: XYZ"


def test_exception_without_message_and_long_messages():
    def bare():
        raise KeyError

    def chatty():
        raise RuntimeError("x" * 5000)

    assert run(ToolExecutor().run(spec(bare), {}, 5.0)).error == "KeyError: KeyError"
    assert len(run(ToolExecutor().run(spec(chatty), {}, 5.0)).error) == 1000


def test_hung_tool_times_out_and_is_abandoned_until_it_returns(release):
    executor = ToolExecutor()
    start = time.monotonic()
    outcome = run(executor.run(spec(lambda: release.wait(10), "hang"), {}, 0.15))
    assert time.monotonic() - start < 5  # the 0.15 s timeout, not the tool's 10 s
    assert outcome.status is ToolStatus.TIMEOUT
    assert "'hang'" in outcome.error and "0.15 s" in outcome.error
    assert executor.abandoned == 1 and executor.running == 1
    release.set()
    assert wait_until(lambda: executor.abandoned == 0 and executor.running == 0)


def test_abandoned_cap_makes_new_calls_fail_fast(release):
    executor = ToolExecutor(max_abandoned=1)
    ran = []
    assert run(executor.run(spec(lambda: release.wait(10)), {}, 0.05)).status is ToolStatus.TIMEOUT
    assert executor.abandoned == 1
    start = time.monotonic()
    outcome = run(executor.run(spec(lambda: ran.append(1)), {}, 5.0))
    assert time.monotonic() - start < 2.5  # refused at once, not after waiting for capacity until its 5 s timeout
    assert outcome.status is ToolStatus.ERROR and "capacity" in outcome.error
    assert ran == []
    release.set()
    assert wait_until(lambda: executor.abandoned == 0)
    assert run(executor.run(spec(lambda: ran.append(1) or "ok"), {}, 5.0)).value == "ok"


def test_no_time_left_means_timeout_without_running():
    ran = []
    outcome = run(ToolExecutor().run(spec(lambda: ran.append(1)), {}, 0))
    assert outcome.status is ToolStatus.TIMEOUT and "deadline" in outcome.error
    assert ran == []


def test_async_tools_run_on_the_loop_and_time_out_without_abandoning():
    executor = ToolExecutor(max_abandoned=0)  # async tools hold no thread, so the cap does not apply

    async def quote(*, symbol):
        await asyncio.sleep(0.01)
        return symbol.lower()

    async def stuck():
        await asyncio.sleep(10)

    async def failing():
        raise LookupError("gone")

    assert run(executor.run(spec(quote), {"symbol": "RIVN"}, 5.0)).value == "rivn"
    start = time.monotonic()
    assert run(executor.run(spec(stuck), {}, 0.1)).status is ToolStatus.TIMEOUT
    assert time.monotonic() - start < 5  # the 0.1 s timeout, not the tool's 10 s
    assert executor.abandoned == 0
    outcome = run(executor.run(spec(failing), {}, 1.0))
    assert (outcome.status, outcome.error) == (ToolStatus.ERROR, "LookupError: gone")


def test_async_tools_run_concurrently():
    # Each call waits until both have started; one after another, the first would time out.
    async def both():
        arrived, both_in = [], asyncio.Event()

        async def meet():
            arrived.append(1)
            if len(arrived) == 2:
                both_in.set()
            await asyncio.wait_for(both_in.wait(), 5)
            return 1

        executor = ToolExecutor()
        return await asyncio.gather(executor.run(spec(meet), {}, 10.0), executor.run(spec(meet), {}, 10.0))

    assert [(o.status, o.value) for o in run(both())] == [(ToolStatus.OK, 1)] * 2


def test_cancelling_a_call_abandons_its_thread(release):
    executor = ToolExecutor()

    async def cancel_midway():
        task = asyncio.ensure_future(executor.run(spec(lambda: release.wait(10)), {}, 5.0))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(cancel_midway())
    assert executor.abandoned == 1
    release.set()
    assert wait_until(lambda: executor.abandoned == 0 and executor.running == 0)


@pytest.mark.parametrize("kwargs", [{"max_concurrent": 0}, {"max_abandoned": -1}])
def test_bad_executor_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        ToolExecutor(**kwargs)
