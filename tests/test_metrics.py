"""fca_* metrics on Triton's metrics port, read back after a known mix of traffic against a real tritonserver."""

from __future__ import annotations

import json
import time

import pytest

from function_calling_agent.scripted_engine.repository import make_scripted_engine
from tests.support.agent_repo import make_agent_model
from tests.support.fca_client import MODEL, make_inputs, scrape_text, settled, stream_request, value
from tests.support.triton_server import TritonServerFactory

pytestmark = pytest.mark.integration


def call(name: str, **arguments) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


SCRIPT = {
    "scenarios": [
        {"name": "two_tools", "match": "TWO_TOOLS",
         "turns": [call("get_current_stock_price", symbol="RIVN") + "\n" + call("get_company_news", symbol="RIVN"),
                   "RIVN: {tool_response}"]},
        {"name": "raises", "match": "RAISES", "turns": [call("failing_tool", reason="boom"), "Sorry."]},
        {"name": "times_out", "match": "TIMES_OUT", "turns": [call("slow_tool", seconds=3), "Too slow."]},
        {"name": "bad_args", "match": "BAD_ARGS",
         "turns": [call("get_current_stock_price", symbol="RIVN", exchange="NASDAQ"), "Fixed."]},
        {"name": "unknown", "match": "UNKNOWN_TOOL", "turns": [call("delete_everything"), "Cannot."]},
        {"name": "loops", "match": "LOOPS", "turns": [call("get_company_news", symbol="RIVN")]},
        {"name": "engine_down", "match": "ENGINE_DOWN", "turns": ["never"], "fail_at_turn": 0},
        {"name": "empty_after_tool", "match": "EMPTY_AFTER_TOOL",
         "turns": [call("get_current_stock_price", symbol="RIVN"), ""]},  # then only the end token
        {"name": "slow_answer", "match": "SLOW_ANSWER",
         "turns": ["one two three four five six seven eight nine ten"], "token_latency_ms": 150},
    ],
    "default_turns": ["Hello there."],
}

FAMILIES = {
    "fca_requests_total": "counter",
    "fca_iterations_per_request": "histogram",
    "fca_tool_calls_total": "counter",
    "fca_tool_latency_seconds": "histogram",
    "fca_time_to_first_token_seconds": "histogram",
    "fca_active_requests": "gauge",
    "fca_abandoned_tool_threads": "gauge",
    "fca_empty_answers_total": "counter",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory, hermes_tokenizer_dir, engine_transport):
    repo = tmp_path_factory.mktemp("metrics-repo")
    make_scripted_engine(repo, SCRIPT, hermes_tokenizer_dir, token_latency_ms=2)
    make_agent_model(repo, hermes_tokenizer_dir, parameters={"engine_transport": engine_transport})
    factory = TritonServerFactory(tmp_path_factory.mktemp("metrics-logs"))
    try:
        yield factory(repo)
    finally:
        factory.stop_all()


def ask(server, text: str, **extra):
    return stream_request(server.grpc_url, make_inputs({"text_input": text, "max_tokens": 256, "stream": True,
                                                        "return_trace": True, **extra}), timeout=30)


def wait_idle(server, timeout: float = 30.0):
    """Samples once no request is in flight and the counters stand still (a cancelled request is counted shortly
    after the cancel)."""
    return settled(server.metrics_url, timeout)


def test_counts_after_known_traffic(server):
    before = wait_idle(server)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    outcomes = {
        "hello": [ask(server, "Say hello"), ask(server, "Hello again")],
        "two_tools": [ask(server, "TWO_TOOLS please")],
        "raises": [ask(server, "RAISES please")],
        "times_out": [ask(server, "TIMES_OUT please")],
        "bad_args": [ask(server, "BAD_ARGS please")],
        "unknown": [ask(server, "UNKNOWN_TOOL please")],
        "loops": [ask(server, "LOOPS please", max_iterations=1)],
        "empty": [ask(server, "EMPTY_AFTER_TOOL please")],
        "invalid": [stream_request(server.grpc_url, make_inputs({"text_input": "hi", "max_tokens": 0}))],
        "engine_down": [ask(server, "ENGINE_DOWN please")],
        "cancelled": [stream_request(server.grpc_url, make_inputs({"text_input": "SLOW_ANSWER", "max_tokens": 64,
                                                                   "stream": True}),
                                     cancel_when=lambda outcome, _: bool(outcome.deltas), timeout=30)],
    }
    for kind, results in outcomes.items():
        for result in results:
            if kind == "cancelled":
                assert result.cancelled and result.finals == 0, result
            elif kind in ("invalid", "engine_down"):
                assert result.finals == 1 and result.error, result
            else:
                assert result.finals == 1 and result.error is None, (kind, result)
    assert outcomes["loops"][0].finish_reason == "incomplete"
    empty = outcomes["empty"][0]
    assert empty.finish_reason == "stop" and empty.text == ""
    assert empty.final["usage"]["detail"].startswith("empty answer: the model ended its turn without an answer")
    after = wait_idle(server)

    assert delta("fca_empty_answers_total", model=MODEL) == 1
    assert delta("fca_requests_total", model=MODEL, outcome="stop") == 8
    assert delta("fca_requests_total", model=MODEL, outcome="incomplete") == 1
    assert delta("fca_requests_total", model=MODEL, outcome="invalid") == 1
    assert delta("fca_requests_total", model=MODEL, outcome="error") == 1
    assert delta("fca_requests_total", model=MODEL, outcome="cancelled") == 1
    assert delta("fca_requests_total", model=MODEL) == 12
    assert value(after, "fca_active_requests", model=MODEL) == 0

    # Iterations: one per tool round; requests that end in an error or a cancel have none to report.
    assert delta("fca_iterations_per_request_count", model=MODEL) == 9
    assert delta("fca_iterations_per_request_sum", model=MODEL) == 5  # two_tools, raises, times_out, loops, empty
    assert delta("fca_iterations_per_request_bucket", model=MODEL, le="0") == 4
    assert delta("fca_iterations_per_request_bucket", model=MODEL, le="1") == 9

    tools = {
        ("get_current_stock_price", "ok"): 2,
        ("get_company_news", "ok"): 2,
        ("failing_tool", "error"): 1,
        ("slow_tool", "timeout"): 1,
        ("get_current_stock_price", "invalid_args"): 1,
        ("delete_everything", "unknown_tool"): 1,
        ("get_company_news", "not_run"): 2,  # the loop's calls after the iteration limit
    }
    for (tool, outcome), count in tools.items():
        assert delta("fca_tool_calls_total", model=MODEL, tool=tool, outcome=outcome) == count, (tool, outcome)
    assert delta("fca_tool_calls_total", model=MODEL) == sum(tools.values())

    # Latency is observed for calls that ran: ok, error and timeout.
    for tool, count in {"get_current_stock_price": 2, "get_company_news": 2, "failing_tool": 1, "slow_tool": 1}.items():
        assert delta("fca_tool_latency_seconds_count", model=MODEL, tool=tool) == count, tool
    slow = delta("fca_tool_latency_seconds_sum", model=MODEL, tool="slow_tool")
    assert 0.45 <= slow < 2.5  # its 0.5 s timeout, not its 3 s sleep (room left for a busy machine)
    assert delta("fca_tool_latency_seconds_bucket", model=MODEL, tool="slow_tool", le="0.25") == 0
    assert delta("fca_tool_latency_seconds_bucket", model=MODEL, tool="slow_tool", le="2.5") == 1
    assert delta("fca_tool_latency_seconds_count", model=MODEL, tool="delete_everything") == 0

    # Time to first token: every request that produced answer text (the cancelled one did before its cancel).
    assert delta("fca_time_to_first_token_seconds_count", model=MODEL) == 8
    client_first = sum(r.first_delta_s for k, rs in outcomes.items() for r in rs if r.first_delta_s is not None)
    server_first = delta("fca_time_to_first_token_seconds_sum", model=MODEL)
    assert 0 < server_first <= client_first


def test_abandoned_tool_threads_gauge_returns_to_zero(server):
    # slow_tool sleeps 3 s past its 0.5 s timeout: abandoned when its request ends, then back once it returns (the
    # gauge is refreshed at the end of each request, so one is sent until it reads 0).
    assert ask(server, "TIMES_OUT again").finals == 1
    assert value(wait_idle(server), "fca_abandoned_tool_threads", model=MODEL) >= 1
    deadline = time.monotonic() + 30
    while True:
        assert ask(server, "Say hello").finals == 1
        if value(wait_idle(server), "fca_abandoned_tool_threads", model=MODEL) == 0:
            break
        assert time.monotonic() < deadline, "the abandoned tool thread never returned"
        time.sleep(0.2)


def test_fca_families_live_under_one_namespace_on_the_metrics_port(server):
    # Labelled families show once they hold a metric: one request with tool calls fills them all.
    assert ask(server, "TWO_TOOLS please").finals == 1
    wait_idle(server)  # counted after its final response
    text = scrape_text(server.metrics_url)
    types = dict(line.split()[2:4] for line in text.splitlines() if line.startswith("# TYPE fca_"))
    assert types == FAMILIES
    for name in FAMILIES:
        assert f"# HELP {name} " in text
    agent_samples = [line for line in text.splitlines() if f'model="{MODEL}"' in line and not line.startswith("nv_")]
    assert agent_samples and all(line.startswith("fca_") for line in agent_samples)
