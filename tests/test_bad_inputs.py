"""A catalogue of bad client inputs against a real tritonserver, over gRPC streaming and HTTP generate.

Every kind must end in one INVALID_ARG-style error whose message says what to change, the server must stay ready,
and good requests streaming at the same time must finish untouched.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

import pytest

from function_calling_agent.scripted_engine.repository import make_scripted_engine
from tests.support.agent_repo import make_agent_model
from tests.support.fca_client import MODEL, Raw, http_generate, is_ready, make_inputs, settled, stream_request, value
from tests.support.triton_server import TritonServerFactory

pytestmark = pytest.mark.integration

SLOW_ANSWER = "The slow answer streams one token at a time while bad requests arrive"
SCRIPT = {
    "scenarios": [{"name": "slow", "match": "SLOW", "turns": [SLOW_ANSWER], "token_latency_ms": 30}],
    "default_turns": ["Hello there."],
}
MAX_INPUT_CHARS = 200_000
CONTEXT = 4096


@dataclasses.dataclass(frozen=True)
class Case:
    kind: str
    grpc: Optional[dict]  # gRPC inputs (plain values or Raw), None when the kind cannot be sent that way
    http: Optional[dict]  # generate endpoint body, None when JSON cannot express it
    expect: tuple[str, ...]  # fragments the error message must contain (case-insensitive)
    before_model: bool = False  # Triton itself rejects it, so the agent never counts it


def both(kind: str, values: dict, *expect: str) -> Case:
    return Case(kind, values, values, expect)


def grpc_only(kind: str, values: dict, *expect: str, before_model: bool = False) -> Case:
    return Case(kind, values, None, expect, before_model)


HI = {"text_input": "hi", "max_tokens": 16}
USER = {"role": "user", "content": "hi"}


def messages(value: Any) -> dict:
    return {"messages": value if isinstance(value, str) else json.dumps(value), "max_tokens": 16}


CATALOGUE = [
    both("missing text_input and messages", {"max_tokens": 16}, "exactly one of text_input", "messages"),
    both("empty text_input", {"text_input": "", "max_tokens": 16}, "text_input is empty"),
    both("blank text_input", {"text_input": " \n\t ", "max_tokens": 16}, "text_input is empty"),
    both("oversized text_input", {"text_input": "a" * (MAX_INPUT_CHARS + 1), "max_tokens": 16},
         "text_input is 200001 characters", "limit is 200000"),
    both("text_input with NUL", {"text_input": "hi\x00there", "max_tokens": 16}, "text_input contains NUL"),
    grpc_only("text_input not UTF-8", {"text_input": Raw([[b"\xff\xfe bad"]], "BYTES"), "max_tokens": 16},
              "text_input is not valid UTF-8"),
    both("text_input and messages both", {**HI, "messages": json.dumps([USER])}, "exactly one of text_input"),
    both("missing max_tokens", {"text_input": "hi"}, "max_tokens is required"),
    both("zero max_tokens", {"text_input": "hi", "max_tokens": 0}, "max_tokens must be between 1 and 4095"),
    both("negative max_tokens", {"text_input": "hi", "max_tokens": -5}, "max_tokens must be between 1", "-5"),
    both("huge max_tokens", {"text_input": "hi", "max_tokens": 2_000_000_000}, "max_tokens must be between 1"),
    both("prompt plus max_tokens over the context", {"text_input": "hi", "max_tokens": CONTEXT - 1},
         "context budget", "lower max_tokens"),
    grpc_only("max_tokens as FP32", {"text_input": "hi", "max_tokens": Raw([[16.0]], "FP32")},
              "max_tokens", "FP32", "INT32", before_model=True),
    grpc_only("max_tokens shape [1, 2]", {"text_input": "hi", "max_tokens": Raw([[16, 16]], "INT32")},
              "max_tokens", "shape", before_model=True),
    grpc_only("text_input as INT32", {"text_input": Raw([[7]], "INT32"), "max_tokens": 16},
              "text_input", "INT32", before_model=True),
    grpc_only("random_seed as INT64", {**HI, "random_seed": Raw([[7]], "INT64")}, "random_seed", "UINT64",
              before_model=True),
    grpc_only("stream as INT32", {**HI, "stream": Raw([[1]], "INT32")}, "stream", "BOOL", before_model=True),
    grpc_only("unknown input name", {**HI, "temprature": Raw([[0.5]], "FP32")}, "temprature", before_model=True),
    grpc_only("batch of two requests",
              {"text_input": Raw([["a"], ["b"]], "BYTES"), "max_tokens": Raw([[8], [8]], "INT32")},
              "batch size 1", "[2, 1]"),
    both("messages not JSON", messages("[{'role': 'user'"), "messages is not valid JSON"),
    both("messages not a list", messages("42"), "messages must be a non-empty JSON list"),
    both("messages empty", messages([]), "messages must be a non-empty JSON list"),
    both("messages too many", messages([USER] * 257), "257 entries", "limit is 256"),
    both("messages bad role", messages([{"role": "root", "content": "hi"}]), "messages[0].role must be one of"),
    both("messages not objects", messages(["hi"]), "messages[0] must be an object"),
    both("messages content not text", messages([{"role": "user", "content": 42}]),
         "messages[0].content must be a string"),
    both("messages last from assistant", messages([USER, {"role": "assistant", "content": "ok"}]),
         "last message must be from the user"),
    both("messages late system", messages([USER, {"role": "system", "content": "obey"}, USER]),
         "messages[1]: a system message is only allowed first"),
    both("messages tool_calls on user", messages([{**USER, "tool_calls": [{"function": {"name": "x"}}]}]),
         "only assistant messages may carry tool_calls"),
    both("messages bad tool_call name", messages([USER, {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "rm -rf /", "arguments": {}}}]}, {"role": "tool", "content": "r"}]),
         "tool_calls[0].function.name must be a tool name"),
    both("messages element not JSON", {"messages": ['{"role": "user"', json.dumps(USER)], "max_tokens": 16},
         "messages (element 0) is not valid JSON"),
    both("messages 257 elements", {"messages": [json.dumps(USER)] * 257, "max_tokens": 16},
         "messages holds 257 elements", "limit is 256"),
    both("messages elements end with assistant", {"messages": [json.dumps(USER), json.dumps(
        {"role": "assistant", "content": "ok"})], "max_tokens": 16}, "last message must be from the user"),
    both("tools comma-separated", {**HI, "tools": "get_current_stock_price,get_company_news"},
         "'get_current_stock_price,get_company_news' is not a tool name", "one per element"),
    both("tools array with a non-name", {**HI, "tools": ["get_company_news", "rm -rf /"]},
         "'rm -rf /' is not a tool name"),
    both("tools broken JSON list", {**HI, "tools": '["get_company_news"'}, "tools is not valid JSON"),
    both("tools not names", {**HI, "tools": json.dumps([{"name": "x"}])}, "tools must be a list of tool names"),
    both("tools unknown name", {**HI, "tools": json.dumps(["delete_everything"])},
         "tools not offered by this server: delete_everything", "offered tools:"),
    both("temperature negative", {**HI, "temperature": -1.0}, "temperature must be in [0, 100]"),
    grpc_only("temperature NaN", {**HI, "temperature": float("nan")}, "temperature must be in [0, 100]", "nan"),
    both("top_p zero", {**HI, "top_p": 0.0}, "top_p must be in (0, 1]"),
    both("top_p above one", {**HI, "top_p": 1.5}, "top_p must be in (0, 1]"),
    both("top_k negative", {**HI, "top_k": -1}, "top_k must be >= 0"),
    both("repetition_penalty zero", {**HI, "repetition_penalty": 0.0}, "repetition_penalty must be in (0, 100]"),
    both("presence_penalty huge", {**HI, "presence_penalty": 1e6}, "presence_penalty must be in [-100, 100]"),
    both("too many stop_words", {**HI, "stop_words": [f"w{i}" for i in range(17)]}, "at most 16 stop_words"),
    both("max_iterations negative", {**HI, "max_iterations": -1}, "max_iterations must be >= 0"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory, hermes_tokenizer_dir):
    repo = tmp_path_factory.mktemp("bad-inputs-repo")
    make_scripted_engine(repo, SCRIPT, hermes_tokenizer_dir, token_latency_ms=2)
    make_agent_model(repo, hermes_tokenizer_dir, max_context_tokens=CONTEXT)
    factory = TritonServerFactory(tmp_path_factory.mktemp("bad-inputs-logs"))
    try:
        yield factory(repo)
    finally:
        factory.stop_all()


def grpc_problem(server, case: Case) -> Optional[str]:
    outcome = stream_request(server.grpc_url, make_inputs(case.grpc), timeout=30, grace=0.2)
    if outcome.finals != 1 or outcome.error is None or outcome.final is not None:
        return f"gRPC {case.kind}: expected one error, got {outcome}"
    missing = [f for f in case.expect if f.lower() not in outcome.error.lower()]
    return f"gRPC {case.kind}: message {outcome.error!r} lacks {missing}" if missing else None


def http_problem(server, case: Case) -> Optional[str]:
    status, body = http_generate(server.http_url, case.http, timeout=30)
    message = body.get("error", "")
    missing = [f for f in case.expect if f.lower() not in message.lower()]
    if status != 400 or missing:
        return f"HTTP {case.kind}: status {status}, message {message!r} lacks {missing}"
    return None


def test_catalogue_is_large_enough():
    kinds = [case.kind for case in CATALOGUE]
    assert len(set(kinds)) == len(kinds) >= 20


def test_bad_inputs_are_rejected_while_good_requests_stream(server):
    before = settled(server.metrics_url)
    done = threading.Event()
    good: list = []

    def stream_good():
        while not done.is_set():
            good.append(stream_request(server.grpc_url, make_inputs(
                {"text_input": "SLOW please", "max_tokens": 64, "stream": True}), timeout=60))

    streams = [threading.Thread(target=stream_good) for _ in range(3)]
    for thread in streams:
        thread.start()
    try:
        jobs = [(grpc_problem, c) for c in CATALOGUE if c.grpc is not None]
        jobs += [(http_problem, c) for c in CATALOGUE if c.http is not None]
        with ThreadPoolExecutor(6) as pool:
            problems = [p for p in pool.map(lambda job: job[0](server, job[1]), jobs) if p]
    finally:
        done.set()
        for thread in streams:
            thread.join(60)
    assert not problems, "\n".join(problems)
    assert is_ready(server.http_url)

    assert len(good) >= 3
    for outcome in good:
        assert outcome.error is None and outcome.finals == 1 and outcome.finish_reason == "stop", outcome
        assert outcome.text == SLOW_ANSWER

    after = settled(server.metrics_url)
    reached_model = sum(c.grpc is not None and not c.before_model for c in CATALOGUE) + \
        sum(c.http is not None for c in CATALOGUE)
    invalid = value(after, "fca_requests_total", model=MODEL, outcome="invalid") - \
        value(before, "fca_requests_total", model=MODEL, outcome="invalid")
    assert invalid == reached_model
    stops = value(after, "fca_requests_total", model=MODEL, outcome="stop") - \
        value(before, "fca_requests_total", model=MODEL, outcome="stop")
    assert stops == len(good)
    assert value(after, "fca_active_requests", model=MODEL) == 0


def test_http_generate_json_type_errors_are_rejected_by_triton(server):
    """Triton's generate endpoint parses JSON into the declared dtypes before the model runs; 2.51 answers a JSON
    type mismatch with 500 "Unable to parse 'data'" (its own message, not the model's) and stays ready."""
    bodies = [{"text_input": "hi", "max_tokens": "sixteen"}, {"text_input": "hi", "max_tokens": 16, "stream": "yes"},
              {"text_input": 7, "max_tokens": 16},
              {"text_input": "hi", "max_tokens": 16, "random_seed": -1}]
    for body in bodies:
        status, response = http_generate(server.http_url, body)
        assert status in (400, 500) and "Unable to parse" in response.get("error", ""), (body, status, response)
    # Triton wraps an out-of-range JSON integer into INT32 without complaint (2**40 arrives as 0); the agent's own
    # range check still rejects what arrives.
    status, response = http_generate(server.http_url, {"text_input": "hi", "max_tokens": 2**40})
    assert status == 400 and "max_tokens must be between 1 and 4095, got 0" in response["error"]
    assert is_ready(server.http_url)
    assert http_generate(server.http_url, HI)[0] == 200


# Triton 2.51 turns a JSON array (or object) value into a STRING tensor only when every element is a string; for
# anything else its own parser fails before the model runs, so the agent cannot answer it (README "Client contract").
TRITON_PARSE_ERROR = "Unable to parse JSON bytes array: attempt to access JSON non-string as string"
TRITON_REJECTS = [
    pytest.param({"messages": [USER], "max_tokens": 16}, 500, TRITON_PARSE_ERROR, id="messages-array-of-objects"),
    pytest.param({"messages": USER, "max_tokens": 16}, 500, TRITON_PARSE_ERROR, id="messages-object"),
    pytest.param({**HI, "tools": [{"type": "function", "function": {"name": "get_company_news"}}]}, 500,
                 TRITON_PARSE_ERROR, id="tools-array-of-objects"),
    pytest.param({**HI, "stop_words": [1, 2]}, 500, TRITON_PARSE_ERROR, id="stop_words-array-of-numbers"),
    pytest.param({**HI, "history": [USER]}, 400,
                 "parameter 'history' has invalid type. It should be either 'int', 'bool', or 'string'.",
                 id="unknown-field-array"),
]


@pytest.mark.parametrize("body, status, message", TRITON_REJECTS)
def test_http_generate_json_arrays_of_non_strings_are_rejected_by_triton(server, body, status, message):
    response_status, response = http_generate(server.http_url, body)
    assert (response_status, response) == (status, {"error": message})
    assert is_ready(server.http_url)
    assert http_generate(server.http_url, HI)[0] == 200


def test_stream_true_on_generate_is_answered_by_triton_naming_generate_stream(server):
    """/generate and /generate_stream hand the model identical requests (no parameter, flag or requested output tells
    them apart), so the agent streams as asked and Triton 2.51, which needs exactly one response on /generate, answers
    with its own error, in a 200 (the status of the first response). Pinned so that a Triton upgrade shows up here."""
    status, body = http_generate(server.http_url, {**HI, "stream": True})
    assert (status, body) == (200, {"error": "generate expects model to produce exactly 1 response, use generate "
                                             "stream for model that generates various number of responses"})
    status, body = http_generate(server.http_url, {**HI, "stream": False})
    assert status == 200 and body["text_output"] == "Hello there." and body["finish_reason"] == "stop"


HOSTILE_JSON = [
    pytest.param(messages([{"role": ["user"], "content": "hi"}]), "messages[0].role", id="role-is-a-list"),
    pytest.param(messages("[" * 5000 + "]" * 5000), "messages", id="messages-nested-5000-deep"),
    pytest.param(messages('[{"role": "user", "content": "hi", "n": ' + "9" * 5000 + "}]"), "messages",
                 id="messages-5000-digit-number"),
    pytest.param({**HI, "tools": "[" * 5000 + "]" * 5000}, "tools", id="tools-nested-5000-deep"),
]


@pytest.mark.parametrize("inputs, names", HOSTILE_JSON)
def test_hostile_json_is_invalid_arg(server, inputs, names):
    outcome = stream_request(server.grpc_url, make_inputs(inputs), timeout=30)
    assert outcome.finals == 1 and outcome.error is not None
    assert not outcome.error.startswith("internal error"), outcome.error
    assert names in outcome.error
