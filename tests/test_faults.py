"""Fault injection against a real tritonserver: failing, hanging and misbehaving tools, engine failures, an unloaded
engine, client cancels under load and the request deadline. Every request must end with exactly one final response
within its deadline, and hung tools must not take the tool executor from other requests.

One server (explicit model control) holds the engine and three agents: the default one, `fca_deadline` with a 3 s
request deadline and `fca_pool` with 4 tool workers, 8 abandoned threads at most, a 1 s tool timeout and
`blocking_tool` (tests/models/tool_modules/fault_tools.py), which hangs until the test opens its gate.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from function_calling_agent.scripted_engine.repository import make_scripted_engine, read_request_log
from tests.support.agent_repo import make_agent_model
from tests.support.fca_client import (
    MODEL,
    is_ready,
    make_inputs,
    scrape,
    settled,
    stop_with_stubs,
    stream_request,
    value,
)
from tests.support.triton_server import TritonServerFactory

pytestmark = pytest.mark.integration

DEADLINE_MODEL, DEADLINE_S = "fca_deadline", 3.0
# Time bounds say which mechanism ended a request, with room for a busy machine: what would end it otherwise takes
# far longer (the 10 s default tool timeout, the 60 s engine idle timeout, a tool that never returns).
DEADLINE_BOUND_S = DEADLINE_S + 4.0
POOL_BOUND_S = 10.0  # fca_pool's 1 s tool timeout; without it a gated call hangs until the client's 30 s
POOL_MODEL, POOL_WORKERS, POOL_ABANDONED = "fca_pool", 4, 8
MAX_RESULT_CHARS = 4000  # the agent's default max_tool_result_chars


def call(name: str, **arguments) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


SCRIPT = {
    "scenarios": [
        {"name": "price", "match": "PRICE", "turns": [call("get_current_stock_price", symbol="RIVN"),
                                                     "Price: {tool_response}"]},
        {"name": "raises", "match": "RAISES", "turns": [call("failing_tool", reason="disk on fire"),
                                                       "Tool said: {tool_response}"]},
        {"name": "overruns", "match": "OVERRUNS",
         "turns": [call("slow_tool", seconds=8), "Tool said: {tool_response}"]},
        {"name": "huge", "match": "HUGE", "turns": [call("huge_tool"), "Got it."]},
        {"name": "not_json", "match": "NOT_JSON", "turns": [call("unserializable_tool"), "Tool said: {tool_response}"]},
        {"name": "hangs_20s", "match": "HANGING_TOOL",
         "turns": [call("sleep_tool", seconds=20), "Tool said: {tool_response}"]},
        *({"name": f"pool_gate_{g}", "match": f"POOL_GATE_{g}", "turns": [call("blocking_tool", gate=g), "Gave up."]}
          for g in ("fill", "burst", "starve")),
        {"name": "sleeps_3s", "match": "SLEEPING_TOOL", "turns": [call("sleep_tool", seconds=3), "Woke."]},
        {"name": "engine_down", "match": "ENGINE_DOWN", "turns": ["never"], "fail_at_turn": 0},
        {"name": "engine_down_later", "match": "ENGINE_LATER", "turns": [call("get_company_news", symbol="RIVN"), "x"],
         "fail_at_turn": 1},
        {"name": "engine_mid_stream", "match": "ENGINE_MID", "turns": ["one two three four five six seven eight"],
         "fail_after_tokens": 3},
        {"name": "engine_hangs", "match": "ENGINE_HANGS", "turns": ["never"], "hang_at_turn": 0},
        {"name": "slow_answer", "match": "SLOW_ANSWER", "turns": ["one two three four five six seven eight nine ten"],
         "token_latency_ms": 100},
    ],
    "default_turns": ["Hello there."],
}


@pytest.fixture(scope="module")
def server(tmp_path_factory, hermes_tokenizer_dir, engine_transport):
    repo = tmp_path_factory.mktemp("faults-repo")
    engine_dir = make_scripted_engine(repo, SCRIPT, hermes_tokenizer_dir, token_latency_ms=2)
    transport = {"engine_transport": engine_transport}
    # Over BLS, Triton 2.51 never delivers an engine error that follows streamed tokens; the idle timeout turns the
    # silence into UNAVAILABLE quickly. Over gRPC the error itself arrives.
    make_agent_model(repo, hermes_tokenizer_dir, parameters={"engine_idle_timeout_seconds": "5", **transport})
    make_agent_model(repo, hermes_tokenizer_dir, model_name=DEADLINE_MODEL,
                     parameters={"request_timeout_seconds": str(DEADLINE_S), **transport})
    make_agent_model(repo, hermes_tokenizer_dir, model_name=POOL_MODEL,
                     tool_modules="scripted_tools,fault_tools",
                     parameters={"tool_workers": str(POOL_WORKERS), "max_abandoned_tool_threads": str(POOL_ABANDONED),
                                 "tool_timeout_seconds": "1", **transport})
    factory = TritonServerFactory(tmp_path_factory.mktemp("faults-logs"))
    gates = tmp_path_factory.mktemp("tool-gates")
    try:
        running = factory(repo, model_control_mode="explicit", load_models=["*"],
                          env={**os.environ, "FCA_TEST_GATE_DIR": str(gates)})
        running.engine_dir, running.repo, running.gates = engine_dir, repo, gates
        running.transport = engine_transport
        yield running
    finally:
        for running in factory.servers:
            stop_with_stubs(running)


def ask(server, text: str, *, model: str = MODEL, stream: bool = False, timeout: float = 30.0, grace: float = 0.2,
        **options):
    inputs = make_inputs({"text_input": text, "max_tokens": 256, "stream": stream, "return_trace": True})
    return stream_request(server.grpc_url, inputs, model=model, timeout=timeout, grace=grace, **options)


def only_call(outcome) -> dict:
    assert outcome.finals == 1 and outcome.error is None, outcome
    (record,) = outcome.trace["tool_calls"]
    return record


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


# ---- tools -------------------------------------------------------------------------------------------------------
def test_tool_that_raises_goes_back_to_the_model(server):
    outcome = ask(server, "RAISES")
    record = only_call(outcome)
    assert record["status"] == "error" and record["error"] == "RuntimeError: disk on fire"
    assert outcome.finish_reason == "stop" and "disk on fire" in outcome.text


def test_tool_that_hangs_past_its_timeout(server):
    outcome = ask(server, "OVERRUNS")
    record = only_call(outcome)
    assert record["status"] == "timeout" and "did not finish within 0.5 s" in record["error"]
    assert outcome.finish_reason == "stop" and outcome.elapsed < 5  # not the tool's 8 s


def test_huge_tool_output_is_capped(server):
    outcome = ask(server, "HUGE")
    assert only_call(outcome)["status"] == "ok" and outcome.finish_reason == "stop"
    (fed_back,) = [m["content"] for m in outcome.trace["messages"] if m["role"] == "tool"]
    assert len(fed_back) <= MAX_RESULT_CHARS + 64  # the {"name":..., "content": ...} wrapper around the capped result
    assert "truncated" in fed_back and "1000002 characters" in fed_back
    turns = [e for e in read_request_log(server.engine_dir) if e["event"] == "start" and e.get("scenario") == "huge"]
    assert turns[-1]["prompt_len"] - turns[-2]["prompt_len"] < MAX_RESULT_CHARS  # tokens, far below 1 M characters


def test_unserializable_tool_output_is_an_error_for_the_model(server):
    outcome = ask(server, "NOT_JSON")
    record = only_call(outcome)
    assert record["status"] == "error" and "not JSON" in record["error"]
    assert outcome.finish_reason == "stop" and "not JSON" in outcome.text


# ---- engine ------------------------------------------------------------------------------------------------------
def test_engine_failing_before_the_first_token_is_unavailable(server):
    outcome = ask(server, "ENGINE_DOWN", stream=True)
    assert outcome.finals == 1 and outcome.final is None
    assert outcome.error.startswith("the engine is unavailable") and "scripted failure" in outcome.error


def test_engine_failing_after_a_tool_round_is_unavailable(server):
    outcome = ask(server, "ENGINE_LATER", stream=True)
    assert outcome.finals == 1 and outcome.error.startswith("the engine is unavailable")


def test_engine_failing_mid_stream_still_ends_within_the_deadline(server):
    outcome = ask(server, "ENGINE_MID", model=DEADLINE_MODEL, stream=True, timeout=DEADLINE_S + 10)
    assert outcome.deltas  # tokens arrived before the failure
    assert outcome.finals == 1 and outcome.elapsed < DEADLINE_BOUND_S, outcome
    assert outcome.error is not None or outcome.finish_reason == "incomplete"


def test_engine_failing_mid_stream_is_unavailable_promptly(server):
    outcome = ask(server, "ENGINE_MID", stream=True, timeout=60,
                  cancel_when=lambda _, elapsed: elapsed > 20)  # the 5 s idle timeout, not the 120 s deadline
    assert outcome.finals == 1 and outcome.error is not None and outcome.error.startswith("the engine is unavailable")
    if server.transport == "grpc":
        # The engine's own error arrives after its streamed tokens, at once (over BLS, 2.51 drops it: the idle
        # timeout of 5 s speaks instead).
        assert "scripted failure" in outcome.error and "after 3 tokens" in outcome.error, outcome.error
        assert outcome.elapsed < 3, outcome.elapsed


# ---- deadline ----------------------------------------------------------------------------------------------------
def test_request_deadline_ends_a_hung_generation(server):
    outcome = ask(server, "ENGINE_HANGS", model=DEADLINE_MODEL, stream=True, timeout=DEADLINE_S + 10)
    assert outcome.finals == 1 and outcome.finish_reason == "incomplete", outcome
    assert "deadline" in outcome.final["usage"]["detail"]
    assert DEADLINE_S - 0.1 < outcome.elapsed < DEADLINE_BOUND_S
    # The agent stopped the hung engine request instead of leaving it generating.
    assert wait_for(lambda: any(e["event"] == "end" and e.get("scenario") == "engine_hangs" and e["end"] == "stopped"
                                for e in read_request_log(server.engine_dir)), 5)


def test_request_deadline_ends_a_hung_tool(server):
    outcome = ask(server, "HANGING_TOOL", model=DEADLINE_MODEL, timeout=DEADLINE_S + 10)
    record = only_call(outcome)
    assert record["status"] == "timeout"
    assert outcome.finish_reason == "stop" and outcome.elapsed < DEADLINE_BOUND_S


# ---- cancellation ------------------------------------------------------------------------------------------------
def test_cancels_mid_generation_and_mid_tool_under_load(server):
    before = settled(server.metrics_url)
    done = threading.Event()
    load: list = []

    def background():
        while not done.is_set():
            load.append(ask(server, "PRICE", stream=True, grace=0))

    def cancel_mid_generation():
        return ask(server, "SLOW_ANSWER", stream=True, cancel_when=lambda o, _: bool(o.deltas))

    def cancel_mid_tool():
        return ask(server, "SLEEPING_TOOL", stream=True, cancel_when=lambda _, elapsed: elapsed > 0.6)

    workers = [threading.Thread(target=background) for _ in range(6)]
    for worker in workers:
        worker.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            cancelled = list(pool.map(lambda f: f(), [cancel_mid_generation, cancel_mid_tool] * 4))
    finally:
        done.set()
        for worker in workers:
            worker.join(60)

    assert all(o.cancelled and o.finals == 0 for o in cancelled), cancelled
    assert len(load) >= 6
    for outcome in load:
        assert outcome.finals == 1 and outcome.error is None and outcome.finish_reason == "stop", outcome
        assert "12.34" in outcome.text

    after = settled(server.metrics_url)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("fca_requests_total", model=MODEL, outcome="cancelled") == len(cancelled)
    assert delta("fca_requests_total", model=MODEL, outcome="stop") == len(load)
    assert delta("fca_requests_total", model=MODEL) == len(cancelled) + len(load)  # one outcome each, none lost
    slow = [e for e in read_request_log(server.engine_dir)
            if e.get("scenario") == "slow_answer" and e["event"] == "end"]
    assert len(slow) >= 4 and all(e["end"] in ("stopped", "cancelled") for e in slow[-4:])


# ---- hung tools and the executor ---------------------------------------------------------------------------------
def pool_gauge(server) -> float:
    return value(scrape(server.metrics_url), "fca_abandoned_tool_threads", model=POOL_MODEL)


def hang_in_pool(server, gate: str, count: int = 1) -> list:
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: ask(server, f"POOL_GATE_{gate}", model=POOL_MODEL), range(count)))


@contextlib.contextmanager
def gate(server, name: str):
    """Calls to blocking_tool(name) in the pool hang until the block ends; then the pool must drain to 0."""
    try:
        yield name
    finally:
        (server.gates / f"gate-{name}").touch()  # where fault_tools.blocking_tool looks

        def drained():  # the gauge is refreshed when a request ends
            assert ask(server, "Say hello", model=POOL_MODEL).finals == 1
            return pool_gauge(server) == 0

        assert wait_for(drained, 30, interval=0.2), "released tool threads did not return"


def test_hung_tools_do_not_exhaust_the_executor(server):
    hung = POOL_WORKERS + 2  # more hanging calls than tool workers
    with gate(server, "fill"):
        for outcome in hang_in_pool(server, "fill", hung):
            assert only_call(outcome)["status"] == "timeout" and outcome.elapsed < POOL_BOUND_S, outcome
        assert POOL_WORKERS <= pool_gauge(server) <= hung

        started = time.monotonic()
        normal = ask(server, "PRICE", model=POOL_MODEL)
        assert only_call(normal)["status"] == "ok" and "12.34" in normal.text
        assert time.monotonic() - started < POOL_BOUND_S

        # One at a time up to the cap; past it a hanging call fails fast instead of adding a thread.
        for _ in range(POOL_ABANDONED):
            if pool_gauge(server) >= POOL_ABANDONED:
                break
            assert only_call(hang_in_pool(server, "fill")[0])["status"] == "timeout"
        assert pool_gauge(server) == POOL_ABANDONED
        record = only_call(hang_in_pool(server, "fill")[0])
        assert record["status"] == "error" and "is at capacity" in record["error"]
        assert record["latency_ms"] < 500 and pool_gauge(server) == POOL_ABANDONED  # not the 1 s timeout
    # Once the hung threads returned (the gate checked the gauge is back to 0), tools run again.
    assert only_call(ask(server, "PRICE", model=POOL_MODEL))["status"] == "ok"


def test_abandoned_thread_cap_holds_under_a_burst(server):
    with gate(server, "burst"):
        for outcome in hang_in_pool(server, "burst", 2 * (POOL_ABANDONED + POOL_WORKERS)):
            assert outcome.finals == 1 and outcome.elapsed < POOL_BOUND_S, outcome
        assert pool_gauge(server) <= POOL_ABANDONED


def test_a_hanging_tool_does_not_starve_healthy_tools(server):
    with gate(server, "starve"):
        for _ in range(POOL_ABANDONED):
            if pool_gauge(server) >= POOL_ABANDONED:
                break
            hang_in_pool(server, "starve", POOL_WORKERS)
        normal = ask(server, "PRICE", model=POOL_MODEL)
        assert only_call(normal)["status"] == "ok", normal.trace["tool_calls"]


# ---- engine unloaded (last: it reloads the engine) ---------------------------------------------------------------
def test_engine_unloaded_is_unavailable_then_recovers_after_reload(server):
    admin = server.http_client()
    admin.unload_model("tensorrt_llm")
    assert wait_for(lambda: not admin.is_model_ready("tensorrt_llm"), 30)

    outcome = ask(server, "Say hello", stream=True)
    assert outcome.finals == 1 and outcome.final is None
    assert outcome.error.startswith("the engine is unavailable") and "tensorrt_llm" in outcome.error
    # Strict readiness reports the server not ready while a loaded model is gone; it is alive and the agent ready.
    assert admin.is_server_live() and admin.is_model_ready(MODEL)

    admin.load_model("tensorrt_llm")
    assert admin.is_model_ready("tensorrt_llm")
    assert is_ready(server.http_url)
    again = ask(server, "Say hello", stream=True)
    assert again.finals == 1 and again.error is None and again.text == "Hello there."
