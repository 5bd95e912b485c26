"""The client contract in-process: the forms `messages` and `tools` may take, and the load-time check of config.pbtxt
against the contract (the same forms against a real server: test_agent_model.py, test_bad_inputs.py)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from function_calling_agent.adapter.contract import (
    CLIENT_INPUTS,
    CLIENT_OUTPUTS,
    InvalidRequest,
    check_declared,
    decode_request,
)

USER = {"role": "user", "content": "hi"}
ASSISTANT = {"role": "assistant", "content": "Which company?"}


def strings(*values: str) -> np.ndarray:
    """A STRING input as Triton delivers it: [1, N] bytes."""
    return np.array([[v.encode() for v in values]], dtype=object).reshape(1, len(values))


def decode(**inputs):
    inputs.setdefault("max_tokens", np.array([[16]], np.int32))
    return decode_request(inputs, max_tokens_limit=4095, max_input_chars=1000, engine_inputs=())


@pytest.mark.parametrize("messages", [
    strings(json.dumps([USER, ASSISTANT, USER])),  # the JSON list as one string
    strings(*(json.dumps(m) for m in (USER, ASSISTANT, USER))),  # one message per element
    strings(json.dumps({"messages": [USER, ASSISTANT, USER]})),  # an object holding them, e.g. a saved tool_trace
    strings(json.dumps([USER, ASSISTANT]), json.dumps(USER)),  # lists and messages, in order
], ids=["json-text", "one-per-element", "messages-object", "mixed"])
def test_messages_forms_give_the_same_conversation(messages):
    assert decode(messages=messages).messages == (USER, ASSISTANT, USER)


@pytest.mark.parametrize("tools", [
    strings("get_company_news", "failing_tool", "get_company_news"),
    strings(json.dumps(["get_company_news", "failing_tool"])),
    strings(' ["get_company_news", "failing_tool"]'),
], ids=["names", "json-text", "json-text-leading-space"])
def test_tools_forms_give_the_same_names(tools):
    assert decode(text_input=strings("hi"), tools=tools).tools == ("get_company_news", "failing_tool")


def test_one_name_and_no_names():
    assert decode(text_input=strings("hi"), tools=strings("get_company_news")).tools == ("get_company_news",)
    assert decode(text_input=strings("hi"), tools=strings()).tools == ()  # an empty JSON array: no tools
    assert decode(text_input=strings("hi")).tools is None  # absent: every tool the server offers


@pytest.mark.parametrize("inputs, message", [
    ({"text_input": strings("hi"), "tools": strings("a,b")}, "'a,b' is not a tool name; send tool names one per"),
    ({"text_input": strings("hi"), "tools": strings("a", "{}")}, "'{}' is not a tool name"),
    ({"text_input": strings("hi"), "tools": strings("[1]")}, "tools must be a list of tool names"),
    ({"messages": strings()}, "messages must be a non-empty JSON list"),
    ({"messages": strings('"hi"')}, "messages must be a non-empty JSON list"),
    ({"messages": strings(json.dumps(USER), "{")}, "messages (element 1) is not valid JSON"),
    ({"messages": strings(*[json.dumps(USER)] * 257)}, "messages holds 257 elements; the limit is 256"),
    ({"messages": strings("x" * 600, "y" * 600)}, "messages is 1200 characters; the limit is 1000"),
], ids=["comma-list", "object-name", "numbers", "empty", "json-string", "element-not-json", "too-many", "too-long"])
def test_bad_forms_say_what_to_send(inputs, message):
    with pytest.raises(InvalidRequest) as caught:
        decode(**inputs)
    assert message in str(caught.value)


def contract_config() -> dict:
    """A model config in Triton's JSON form (dims as strings) declaring exactly the contract."""
    return {"input": [{"name": name, "data_type": spec.data_type, "dims": [str(d) for d in spec.dims]}
                      for name, spec in CLIENT_INPUTS.items()],
            "output": [{"name": name, "data_type": "TYPE_STRING", "dims": ["-1"]} for name in CLIENT_OUTPUTS]}


def test_check_declared_accepts_the_contract_and_names_a_wrong_dims():
    check_declared(contract_config())
    config = copy.deepcopy(contract_config())
    next(t for t in config["input"] if t["name"] == "tools")["dims"] = ["1"]
    with pytest.raises(ValueError, match=r"input 'tools' must have dims \[-1\], got \[1\]"):
        check_declared(config)
