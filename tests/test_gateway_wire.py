"""The gateway's mapping of OpenAI requests to the agent's inputs and of the agent's results to OpenAI objects (no
server: the integration tests in test_openai_gateway.py run the same through the real openai client)."""

from __future__ import annotations

import json

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from function_calling_agent.adapter.contract import CLIENT_INPUTS, error_kind
from function_calling_agent.gateway import command_line, usage_examples
from function_calling_agent.gateway.agent_stream import Final, agent_inputs
from function_calling_agent.gateway.wire import BadRequest, ChunkWriter, completion, parse_chat_request

BASE = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def parse(**extra):
    return parse_chat_request({**BASE, **extra}, default_max_tokens=512)


def test_every_mapped_field_becomes_an_agent_input_of_the_contract():
    request = parse(stream=True, stream_options={"include_usage": True}, max_completion_tokens=64, temperature=0.2,
                    top_p=0.9, seed=3, presence_penalty=0.1, frequency_penalty=0.2, stop="END", top_k=4,
                    repetition_penalty=1.1, tools=[{"type": "function", "function": {"name": "f"}}],
                    tool_choice={"type": "function", "function": {"name": "f"}}, parallel_tool_calls=False,
                    max_iterations=2, server_tools=["get_time"], chat_template_kwargs={"enable_thinking": False},
                    return_tool_trace=True, user="u1")
    assert set(request.inputs) <= set(CLIENT_INPUTS)
    assert request.stream and request.include_usage and request.return_tool_trace
    inputs = request.inputs
    assert inputs["max_tokens"] == 64 and inputs["random_seed"] == 3 and inputs["stop_words"] == ["END"]
    assert json.loads(inputs["tool_choice"]) == {"type": "function", "function": {"name": "f"}}
    assert inputs["parallel_tool_calls"] is False and inputs["enable_thinking"] is False
    assert json.loads(inputs["tools"]) == ["get_time"] and json.loads(inputs["client_tools"])[0]["function"]["name"] == "f"
    assert inputs["return_reasoning"] is True
    tensors = agent_inputs(inputs)  # every value converts to its contract type
    assert {t.name() for t in tensors} == set(inputs)
    assert next(t for t in tensors if t.name() == "stop_words").shape() == [1, 1]


def test_defaults_and_the_developer_role():
    request = parse_chat_request({"model": "m", "messages": [{"role": "developer", "content": "Be brief."},
                                                              {"role": "user", "content": "hi"}]},
                                 default_max_tokens=77)
    assert request.inputs["max_tokens"] == 77 and request.inputs["stream"] is False
    assert json.loads(request.inputs["messages"])[0]["role"] == "system"
    assert "client_tools" not in request.inputs and "tool_choice" not in request.inputs


@pytest.mark.parametrize("extra, param, fragment", [
    ({"n": 3}, "n", "n must be 1"),
    ({"logprobs": True}, "logprobs", "logprobs are not returned"),
    ({"logit_bias": {"1": 5}}, "logit_bias", "logit_bias is not supported"),
    ({"response_format": {"type": "json_schema"}}, "response_format", "structured output"),
    ({"reasoning_effort": "low"}, "reasoning_effort", "enable_thinking"),
    ({"bogus": 1, "zzz": 2}, "bogus", "unrecognized request argument(s): bogus, zzz"),
    ({"stream_options": {"include_usage": True}}, "stream_options", "only allowed with stream: true"),
    ({"seed": -1}, "seed", "seed must be >= 0"),
    ({"top_k": 1.5}, "top_k", "top_k must be a number"),
    ({"stop": [1]}, "stop", "stop must be a string or a list of strings"),
    ({"chat_template_kwargs": {"x": 1}}, "chat_template_kwargs", "takes only enable_thinking"),
    ({"messages": []}, "messages", "non-empty list"),
    ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role", "must be one of"),
    ({"model": ""}, "model", "model is required"),
])
def test_refused_fields_are_named(extra, param, fragment):
    with pytest.raises(BadRequest) as info:
        parse(**extra)
    assert fragment in info.value.message and info.value.param == param


def test_off_values_of_refused_fields_are_accepted():
    parse(logprobs=False, logit_bias={}, response_format={"type": "text"}, store=False, n=1)


FINAL = Final(finish_reason="tool_calls", text="", reasoning="Thinking.", tool_trace={"detail": "x"},
              usage={"prompt_tokens": 10, "completion_tokens": 5, "reused_prompt_tokens": 4, "reasoning_tokens": 2},
              tool_calls=[{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}])


def test_a_completion_is_an_openai_chat_completion():
    body = completion("chatcmpl-1", "m", FINAL, text="", reasoning="Thinking.", return_tool_trace=True)
    parsed = ChatCompletion.model_validate(body)
    message = parsed.choices[0].message
    assert parsed.choices[0].finish_reason == "tool_calls" and message.content is None
    assert message.tool_calls[0].function.name == "f" and message.reasoning_content == "Thinking."
    assert parsed.usage.total_tokens == 15 and parsed.usage.prompt_tokens_details.cached_tokens == 4
    assert parsed.usage.completion_tokens_details.reasoning_tokens == 2 and body["tool_trace"] == {"detail": "x"}
    incomplete = completion("c", "m", Final("incomplete", "A.", "", {}, [], None), text="A.", reasoning="",
                            return_tool_trace=False)
    assert incomplete["choices"][0]["finish_reason"] == "length" and "tool_trace" not in incomplete


def test_streamed_chunks_are_openai_chunks_and_end_with_done():
    writer = ChunkWriter("chatcmpl-1", "m")
    data = writer.role() + writer.reasoning("R") + writer.content("C") + writer.end(
        FINAL, include_usage=True, return_tool_trace=True)
    events = [line[6:] for line in data.decode().split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate_json(e) for e in events[:-1]]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[1].choices[0].delta.reasoning_content == "R" and chunks[2].choices[0].delta.content == "C"
    assert chunks[3].choices[0].delta.tool_calls[0].id == "call_1"
    assert chunks[4].choices[0].finish_reason == "tool_calls" and json.loads(events[4])["tool_trace"]
    assert chunks[5].choices == [] and chunks[5].usage.total_tokens == 15


def test_agent_error_messages_map_to_kinds():
    assert error_kind("the engine is unavailable: boom") == "unavailable"
    assert error_kind("internal error: KeyError") == "internal"
    assert error_kind("request cancelled by the client") == "cancelled"
    assert error_kind("max_tokens must be between 1 and 100") == "invalid"


def test_the_serve_command_line_and_examples():
    command = command_line(9000, triton_url="localhost:8001", host="0.0.0.0", python="python3")
    assert command == ["python3", "-m", "function_calling_agent.gateway", "--host", "0.0.0.0", "--port", "9000",
                       "--triton-url", "localhost:8001", "--model", "function_calling_agent"]
    text = usage_examples("http://localhost:9000/v1")
    assert "curl -N http://localhost:9000/v1/chat/completions" in text and "OpenAI(base_url='http://localhost:9000/v1'" in text
