"""Hypothesis fuzzing of the tool-call parser and of client request decoding (in-process, no server).

Only `ToolCallFormatError` may leave `parse_tool_call`, only `InvalidRequest` may leave `decode_request`, and the
streaming parser must never raise. Hostile inputs that once crashed are pinned as explicit cases below.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from function_calling_agent.adapter.contract import InvalidRequest, decode_request
from function_calling_agent.tool_call_parser import (
    MAX_CALL_CHARS,
    ToolCall,
    ToolCallFormatError,
    ToolCallParser,
    parse_tool_call,
)
from function_calling_agent.turn_parser import TurnParser

EXAMPLES = {"stream": 2500, "turn": 2000, "call_text": 2000, "call_structured": 2000, "request_arrays": 2000,
            "request_messages": 2000}


def fuzz(name: str) -> settings:
    return settings(max_examples=EXAMPLES[name], deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


COUNTS: Counter = Counter()

TAGS = ["<tool_call>", "</tool_call>", "<tool_call", "</tool_", "<", ">", "<|im_start|>", "<|im_end|>",
        "</tool_response>", "<tool_response>", "\n", " ", "{", "}", '"', "'", '{"name": "f", "arguments": {}}',
        '"name"', ": ", "\\", "[", "]"]


# ---- the streaming <tool_call> parser ----------------------------------------------------------------------------
fragments = st.lists(st.one_of(st.sampled_from(TAGS), st.text(max_size=12)), max_size=30).map("".join)


@fuzz("stream")
@given(text=fragments, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
       tool_names=st.sampled_from([(), ("f", "g")]))
def test_stream_parser_never_raises_and_ignores_chunking(text, cuts, tool_names):
    COUNTS["stream"] += 1
    whole = ToolCallParser(tool_names)
    answer = whole.feed(text) + whole.finish()

    chunked = ToolCallParser(tool_names)
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    chunked_answer = "".join(chunked.feed(piece) for piece in pieces) + chunked.finish()

    assert chunked_answer == answer and chunked.calls == whole.calls
    for body in whole.calls:
        try:
            parse_tool_call(body)
        except ToolCallFormatError:
            pass


@fuzz("turn")
@given(text=st.lists(st.one_of(st.sampled_from(TAGS + ["<think>", "</think>", "</thi", "<th"]), st.text(max_size=8)),
                     max_size=30).map("".join),
       cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
       tool_names=st.sampled_from([(), ("f",)]), think=st.booleans(), opened=st.booleans())
def test_turn_parser_ignores_chunking(text, cuts, tool_names, think, opened):
    COUNTS["turn"] += 1

    def run(pieces):
        parser = TurnParser(tool_names, think=think, in_reasoning=opened and think)
        deltas = [d for piece in pieces for d in parser.feed(piece)] + parser.finish()
        joined = {kind: "".join(t for k, t in deltas if k == kind) for kind in ("reasoning", "answer")}
        return joined, parser.calls, parser.unterminated

    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    assert run([text]) == run([text[a:b] for a, b in zip(bounds, bounds[1:])])


def test_stream_parser_never_releases_a_tool_tag_as_answer_text():
    parser = ToolCallParser()
    answer = parser.feed('Sure.<tool_</tool_call>call>{"name": "f", "arguments": {}}</tool_call>') + parser.finish()
    assert "<tool_call>" not in answer and parser.calls


# ---- parse_tool_call -------------------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-10**30, max_value=10**30) | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=12,
)
small_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=4,
)


def check_call(body: str) -> None:
    try:
        call = parse_tool_call(body)
    except ToolCallFormatError as exc:
        assert str(exc)
        return
    assert isinstance(call, ToolCall) and isinstance(call.name, str) and call.name
    assert isinstance(call.arguments, dict)


@fuzz("call_text")
@given(body=st.one_of(st.text(max_size=200), fragments))
@example(body="x" * (MAX_CALL_CHARS + 1))
@example(body="{'name': 'f', 'arguments': __import__('os').getcwd()}")
@example(body='{"name": "f", "arguments": "not an object"}')
def test_parse_tool_call_on_any_text(body):
    COUNTS["call_text"] += 1
    check_call(body)


@fuzz("call_structured")
@given(name=st.one_of(st.text(max_size=20), json_values), arguments=json_values,
       key=st.sampled_from(["arguments", "parameters", "args"]),
       encode=st.sampled_from(["json", "repr", "json_args_string", "truncated"]))
def test_parse_tool_call_on_call_shaped_values(name, arguments, key, encode):
    COUNTS["call_structured"] += 1
    value = {"name": name, key: arguments}
    if encode == "json":
        body = json.dumps(value)
    elif encode == "repr":  # Python-literal pseudo-JSON, as some models write it
        body = repr(value)
    elif encode == "json_args_string":
        body = json.dumps({"name": name, key: json.dumps(arguments)})
    else:
        text = json.dumps(value)
        body = text[: len(text) // 2]
    check_call(body)


# ---- decode_request ----------------------------------------------------------------------------------------------
INPUTS = ["text_input", "max_tokens", "stream", "temperature", "top_k", "top_p", "random_seed", "repetition_penalty",
          "presence_penalty", "frequency_penalty", "stop_words", "messages", "max_iterations", "tools",
          "return_trace"]
DTYPES = [np.object_, np.int32, np.int64, np.uint64, np.float32, np.float64, np.bool_]
ENGINE_INPUTS = ("temperature", "runtime_top_k", "runtime_top_p", "random_seed", "repetition_penalty",
                 "presence_penalty", "frequency_penalty")


def decode(inputs) -> None:
    try:
        request = decode_request(inputs, max_tokens_limit=4095, max_input_chars=5000, engine_inputs=ENGINE_INPUTS)
    except InvalidRequest as exc:
        assert str(exc)
        return
    assert 1 <= request.max_tokens <= 4095 and request.messages
    assert request.messages[-1]["role"] in ("user", "tool")


@st.composite
def arrays(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.sampled_from([(1, 1), (1, 1), (1, 1), (1,), (2, 1), (1, 2), (1, 0), (1, 3)]))
    size = int(np.prod(shape))
    if dtype is np.object_:
        items = draw(st.lists(st.one_of(st.text(max_size=30), st.binary(max_size=30)), min_size=size, max_size=size))
        array = np.empty(size, dtype=object)
        array[:] = items
        return array.reshape(shape)
    if dtype is np.bool_:
        return np.array(draw(st.lists(st.booleans(), min_size=size, max_size=size)), dtype=dtype).reshape(shape)
    if dtype in (np.float32, np.float64):
        width = 32 if dtype is np.float32 else 64
        values = draw(st.lists(st.floats(width=width), min_size=size, max_size=size))
        return np.array(values, dtype=dtype).reshape(shape)
    info = np.iinfo(dtype)
    values = draw(st.lists(st.integers(int(info.min), int(info.max)), min_size=size, max_size=size))
    return np.array(values, dtype=dtype).reshape(shape)


@fuzz("request_arrays")
@given(inputs=st.dictionaries(st.sampled_from(INPUTS), arrays(), max_size=8))
@example(inputs={"text_input": np.array([[b"hi"]], dtype=object), "max_tokens": np.array([[16]], dtype=np.int32)})
def test_decode_request_on_any_tensors(inputs):
    COUNTS["request_arrays"] += 1
    decode(inputs)


# Message-shaped JSON, roles of any JSON type (unhashable roles once crashed: see the pinned cases below).
roles = st.one_of(st.sampled_from(["system", "user", "assistant", "tool"]), st.text(max_size=8), st.none(),
                  st.integers(), st.booleans(), st.lists(st.text(max_size=4), max_size=2),
                  st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
tool_calls = st.lists(st.one_of(
    small_json,
    st.fixed_dictionaries({"function": st.fixed_dictionaries(
        {"name": st.one_of(st.text(max_size=12), small_json),
         "arguments": st.one_of(small_json, st.text(max_size=20))})},
        optional={"id": small_json}),
), max_size=3)
message = st.fixed_dictionaries(
    {"role": roles},
    optional={"content": st.one_of(st.text(max_size=30), small_json,
                                   st.lists(st.fixed_dictionaries({"type": st.just("text"),
                                                                   "text": st.text(max_size=10)}), max_size=3)),
              "tool_calls": tool_calls, "name": small_json | st.text(max_size=10),
              "tool_call_id": small_json | st.text(max_size=10)},
)


@fuzz("request_messages")
@given(messages=st.one_of(st.lists(message, max_size=6), small_json, st.dictionaries(st.just("messages"),
                                                                                      st.lists(message, max_size=4))),
       tools=st.one_of(st.none(), st.lists(st.text(max_size=10), max_size=3).map(json.dumps), st.text(max_size=20)),
       max_tokens=st.integers(-(2**31), 2**31 - 1),
       raw=st.booleans())
def test_decode_request_on_message_shaped_json(messages, tools, max_tokens, raw):
    COUNTS["request_messages"] += 1
    text = json.dumps(messages)
    if raw:  # break it a little: truncation makes most of it invalid JSON
        text = text[: max(1, len(text) - 1)]
    inputs = {"messages": np.array([[text.encode()]], dtype=object), "max_tokens": np.array([[max_tokens]], np.int32)}
    if tools is not None:
        inputs["tools"] = np.array([[tools.encode()]], dtype=object)
    decode(inputs)


def test_fuzz_volume(capsys):
    """Runs after the fuzz tests above: their examples add up to at least 10 000."""
    if not COUNTS:
        pytest.skip("run with the fuzz tests above")
    with capsys.disabled():
        print("\nfuzz examples: " + ", ".join(f"{k}={COUNTS[k]}" for k in EXAMPLES) + f", total={sum(COUNTS.values())}")
    for name, quota in EXAMPLES.items():
        assert COUNTS[name] >= quota * 0.9, (name, COUNTS[name])
    assert sum(COUNTS.values()) >= 10_000


# ---- known crashes -----------------------------------------------------------------------------------------------
DEEP = "[" * 3000 + "]" * 3000
HUGE_INT = "9" * 5000


@pytest.mark.parametrize("body", [DEEP, '{"name": "f", "arguments": {"a": ' + HUGE_INT + "}}",
                                  '{"name": "f", "arguments": "{\\"a\\": ' + HUGE_INT + '}"}'],
                         ids=["deep-nesting", "huge-int", "huge-int-in-string-arguments"])
def test_parse_tool_call_hostile_json_raises_format_error(body):
    with pytest.raises(ToolCallFormatError):
        parse_tool_call(body)


@pytest.mark.parametrize("body", ["{'name': 'f', 'arguments': {'a': {1, 2}}}",
                                  "{'name': 'f', 'arguments': {'a': b'x'}}",
                                  "{'name': 'f', 'arguments': {'a': 1j}}",
                                  "{'name': 'f', 'arguments': {(1, 2): 3}}"],
                         ids=["set", "bytes", "complex", "tuple-key"])
def test_parse_tool_call_returns_only_json_arguments(body):
    try:
        call = parse_tool_call(body)
    except ToolCallFormatError:
        return
    json.dumps(call.arguments)


@pytest.mark.parametrize("name, text", [
    ("messages", '[{"role": ["user"], "content": "hi"}]'),
    ("messages", '[{"role": {"a": 1}, "content": "hi"}]'),
    ("messages", DEEP),
    ("messages", '[{"role": "user", "content": "hi", "n": ' + HUGE_INT + "}]"),
    ("tools", DEEP),
    ("tools", "[" + HUGE_INT + "]"),
], ids=["role-list", "role-object", "messages-deep", "messages-huge-int", "tools-deep", "tools-huge-int"])
def test_decode_request_hostile_json_is_invalid_request(name, text):
    inputs = {"max_tokens": np.array([[16]], np.int32), name: np.array([[text.encode()]], dtype=object)}
    if name == "tools":
        inputs["text_input"] = np.array([[b"hi"]], dtype=object)
    with pytest.raises(InvalidRequest):
        decode_request(inputs, max_tokens_limit=4095, max_input_chars=200_000, engine_inputs=ENGINE_INPUTS)
