"""The OpenAI-compatible gateway end to end: the real `openai` client -> the gateway process -> tritonserver ->
function_calling_agent -> the scripted engine. Each test picks its scenario with a marker in the first user message;
the scripted engine's request log shows what reached the engine (guides, bad words, stop requests, prompt ids)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import openai
import pytest
import requests

from function_calling_agent.gateway.process import GatewayProcess
from function_calling_agent.scripted_engine.repository import make_scripted_engine, read_request_log
from tests.support.agent_repo import make_agent_model
from tests.support.fca_client import settled, value
from tests.support.model_families import build_family_tokenizer
from tests.support.triton_server import TritonServerFactory

pytestmark = pytest.mark.integration

API_KEY = "test-key-0123456789"
MODEL = "function_calling_agent"
TRANSCRIPTS = Path("/tmp/fca_openai_transcripts.txt")
SCREEN_TOOL = {"type": "function", "function": {
    "name": "show_on_screen", "description": "Shows a short text on the user's screen.",
    "parameters": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}}


def call(name: str, **arguments) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def call_object(name: str, **arguments) -> str:
    return json.dumps({"name": name, "arguments": arguments})


PRICE = call("get_current_stock_price", symbol="RIVN")
SCENARIOS = [
    {"name": "answer", "match": "[answer]", "turns": ["Paris is the capital of France."]},
    {"name": "server_tool", "match": "[server-tool]", "turns": [PRICE, "RIVN trades at {tool_response}."]},
    {"name": "client_tool", "match": "[client-tool]",
     "turns": ["Let me show it.\n" + call("show_on_screen", text="RIVN"), "It is on your screen now."]},
    {"name": "mixed", "match": "[mixed]", "record_prompt_ids": True,
     "turns": [PRICE + "\n" + call("show_on_screen", text="RIVN 12.34"), "Done; the screen said {tool_response}"]},
    {"name": "required", "match": "[required]", "guided": call_object("get_current_stock_price", symbol="RIVN"),
     "turns": ["I would rather chat.", "RIVN: {tool_response}"]},
    {"name": "named", "match": "[named]", "guided": call_object("show_on_screen", text="forced"),
     "turns": ["I would rather chat."]},
    {"name": "none", "match": "[none]", "turns": ["No tools needed: 42."]},
    {"name": "parallel", "match": "[parallel]",
     "turns": [PRICE + "\n" + call("get_company_news", symbol="RIVN"), "Got {tool_response}"]},
    {"name": "slow", "match": "[slow]", "token_latency_ms": 60,
     "turns": [" ".join(["The market moved a little today and then some more."] * 12)]},
    {"name": "engine_fail", "match": "[engine-fail]", "turns": ["never"], "fail_at_turn": 0},
    {"name": "sampling", "match": "[sampling]", "turns": ["Sampled."]},
]
QWEN3_SCRIPT = {"scenarios": [], "default_turns": ["<think>\nThe user greets me; greet back.\n</think>\n\nHello!"]}
ALL_ENGINE_INPUTS = ("input_ids,input_lengths,request_output_len,end_id,pad_id,streaming,exclude_input_in_output,temperature,runtime_top_k,runtime_top_p,"
                     "random_seed,repetition_penalty,presence_penalty,frequency_penalty,stop_words_list,"
                     "bad_words_list,stop,return_perf_metrics")  # no guided-decoding inputs


@pytest.fixture(scope="module")
def stack(tmp_path_factory, hermes_tokenizer_dir):
    repo = tmp_path_factory.mktemp("openai-repo")
    engine_dir = make_scripted_engine(repo, {"scenarios": SCENARIOS, "default_turns": ["Default."]},
                                      hermes_tokenizer_dir, token_latency_ms=1)
    make_agent_model(repo, hermes_tokenizer_dir, parameters={"engine_idle_timeout_seconds": "10"})
    qwen3_dir = build_family_tokenizer(tmp_path_factory.mktemp("qwen3"), "qwen3")
    qwen3_engine = make_scripted_engine(repo, QWEN3_SCRIPT, qwen3_dir, model_name="engine_qwen3", token_latency_ms=1)
    make_agent_model(repo, qwen3_dir, model_name="agent_qwen3",
                     parameters={"tensorrt_llm_model_name": "engine_qwen3", "engine_inputs": ALL_ENGINE_INPUTS})
    logs = tmp_path_factory.mktemp("openai-logs")
    factory = TritonServerFactory(logs)
    gateways = []
    try:
        server = factory(repo)
        main = GatewayProcess(triton_url=server.grpc_url, api_key=API_KEY, log_path=str(logs / "gateway.log"))
        qwen3 = GatewayProcess(triton_url=server.grpc_url, model="agent_qwen3", served_model_name="qwen3-agent",
                               log_path=str(logs / "gateway-qwen3.log"))
        for gateway in (main, qwen3):
            gateways.append(gateway)
            gateway.start()
        yield {"server": server, "engine_dir": engine_dir, "qwen3_engine": qwen3_engine, "gateway": main,
               "qwen3": qwen3, "tokenizer_dir": hermes_tokenizer_dir}
    finally:
        for gateway in gateways:
            gateway.stop()
        factory.stop_all()


@pytest.fixture(scope="module")
def client(stack):
    return openai.OpenAI(base_url=stack["gateway"].base_url, api_key=API_KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def tokenizer(stack):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(stack["tokenizer_dir"])


def engine_log(stack, scenario: str, event: str = "start") -> list[dict]:
    """The scripted engine's log entries of one scenario (stop entries name only the request they stop)."""
    entries = read_request_log(stack["engine_dir"])
    if event == "stop":
        return [e for e in entries if e["event"] == "stop"]
    return [e for e in entries if e.get("scenario") == scenario and e["event"] == event]


def record(title: str, lines) -> None:
    """Appends a transcript for the report."""
    with TRANSCRIPTS.open("a", encoding="utf-8") as f:
        f.write(f"### {title}\n" + "\n".join(str(line) for line in lines) + "\n\n")


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# ---- answers, streaming and not -------------------------------------------------------------------------------

def test_models_lists_the_served_model(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL] and models.data[0].owned_by == "function_calling_agent"
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_a_non_streamed_answer(client):
    reply = client.chat.completions.create(model=MODEL, messages=user("[answer] capital of France?"))
    choice = reply.choices[0]
    assert choice.message.content == "Paris is the capital of France." and choice.finish_reason == "stop"
    assert choice.message.role == "assistant" and choice.message.tool_calls is None
    assert reply.id.startswith("chatcmpl-") and reply.object == "chat.completion" and reply.model == MODEL
    assert reply.usage.completion_tokens > 0 and reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_a_streamed_answer_after_a_server_tool(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=user("[server-tool] RIVN price?"),
                                                 stream=True, stream_options={"include_usage": True},
                                                 extra_body={"return_tool_trace": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == 'RIVN trades at {"name": "get_current_stock_price", "content": ' \
                   '{"symbol":"RIVN","price":12.34,"currency":"USD"}}.'
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) > 3  # token by token, not one block
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == "stop"
    trace = finals[0].tool_trace
    assert [(c["name"], c["status"]) for c in trace["tool_calls"]] == [("get_current_stock_price", "ok")]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all("<tool_call" not in (d or "") for d in deltas)
    record("streamed answer after a server tool", [f"delta: {d!r}" for d in deltas]
           + [f"finish_reason: {finals[0].choices[0].finish_reason}",
              f"tool_trace.tool_calls: {trace['tool_calls']}", f"usage: {chunks[-1].usage.model_dump()}"])


# ---- client tools ----------------------------------------------------------------------------------------------

def test_a_client_tool_round_trip(client, stack):
    messages = user("[client-tool] show RIVN on my screen")
    first = client.chat.completions.create(model=MODEL, messages=messages, tools=[SCREEN_TOOL])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me show it."
    (tool_call,) = choice.message.tool_calls
    assert tool_call.type == "function" and tool_call.function.name == "show_on_screen"
    assert json.loads(tool_call.function.arguments) == {"text": "RIVN"}
    messages = messages + [choice.message.model_dump(exclude_none=True),
                           {"role": "tool", "tool_call_id": tool_call.id, "content": '{"shown": true}'}]
    second = client.chat.completions.create(model=MODEL, messages=messages, tools=[SCREEN_TOOL])
    assert second.choices[0].message.content == "It is on your screen now."
    assert second.choices[0].finish_reason == "stop"
    record("client-tool round trip", [
        f"request 1 -> finish_reason={choice.finish_reason} content={choice.message.content!r}",
        f"  tool_calls={[c.model_dump() for c in choice.message.tool_calls]}",
        f"request 2 (+ tool result '{{\"shown\": true}}') -> finish_reason={second.choices[0].finish_reason} "
        f"content={second.choices[0].message.content!r}"])


def test_a_streamed_turn_mixing_server_and_client_tools_continues_token_exactly(client, stack, tokenizer):
    messages = user("[mixed] price of RIVN, then show it")
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, tools=[SCREEN_TOOL], stream=True,
                                                 extra_body={"return_tool_trace": True}))
    calls = [t for c in chunks if c.choices for t in (c.choices[0].delta.tool_calls or [])]
    (final,) = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert final.choices[0].finish_reason == "tool_calls"
    assert [(t.index, t.function.name) for t in calls] == [(0, "show_on_screen")]
    # the server call ran before the run ended; the client got only its own call
    assert [(c["name"], c["status"]) for c in final.tool_trace["tool_calls"]] == [
        ("get_current_stock_price", "ok"), ("show_on_screen", "client")]
    assistant = {"role": "assistant", "content": None, "tool_calls": [
        {"id": calls[0].id, "type": "function",
         "function": {"name": calls[0].function.name, "arguments": calls[0].function.arguments}}]}
    messages = messages + [assistant, {"role": "tool", "tool_call_id": calls[0].id, "content": "SHOWN-OK"}]
    reply = client.chat.completions.create(model=MODEL, messages=messages, tools=[SCREEN_TOOL],
                                           extra_body={"return_tool_trace": True})
    assert reply.choices[0].message.content == "Done; the screen said SHOWN-OK"
    # the agent put the server call and its result back into the conversation
    restored = reply.tool_trace["messages"]
    assert [c["function"]["name"] for c in restored[1]["tool_calls"]] == ["get_current_stock_price",
                                                                           "show_on_screen"]
    assert '"price":12.34' in restored[2]["content"] and restored[3]["content"] == "SHOWN-OK"
    # token-exact: the continuation's prompt = the first prompt + the ids the engine generated + the results
    first, second = engine_log(stack, "mixed")[-2:]
    assert (first["turn"], second["turn"]) == (0, 1)
    generated = tokenizer.encode(SCENARIOS[3]["turns"][0], add_special_tokens=False) \
        + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    prefix = first["input_ids"] + generated
    assert second["input_ids"][: len(prefix)] == prefix
    tail = tokenizer.decode(second["input_ids"][len(prefix):])
    assert tail.count("<tool_response>") == 2 and "12.34" in tail and "SHOWN-OK" in tail


def test_a_client_tool_named_like_a_server_tool_is_a_400(client):
    clash = {"type": "function", "function": {"name": "get_current_stock_price", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=user("[answer] hi"), tools=[clash])
    assert "has the name of a server tool" in info.value.message


# ---- tool_choice and parallel_tool_calls -------------------------------------------------------------------------

def test_tool_choice_auto_lets_the_model_answer(client, stack):
    reply = client.chat.completions.create(model=MODEL, messages=user("[required] RIVN?"), tools=[SCREEN_TOOL],
                                           tool_choice="auto")
    assert reply.choices[0].message.content == "I would rather chat."
    assert "guided_decoding_guide_type" not in engine_log(stack, "required")[-1]["inputs"]


def test_tool_choice_required_constrains_the_turn_through_the_engines_guide(client, stack):
    reply = client.chat.completions.create(model=MODEL, messages=user("[required] RIVN?"), tools=[SCREEN_TOOL],
                                           tool_choice="required", extra_body={"return_tool_trace": True})
    assert reply.choices[0].message.content.startswith('RIVN: {"name": "get_current_stock_price"')
    assert [(c["name"], c["status"]) for c in reply.tool_trace["tool_calls"]] == [("get_current_stock_price", "ok")]
    guided, after = engine_log(stack, "required")[-2:]
    assert guided["inputs"]["guided_decoding_guide_type"] == "json_schema"
    schema = json.loads(guided["inputs"]["guided_decoding_guide"])
    assert [b["properties"]["name"]["const"] for b in schema["anyOf"]] == [
        "failing_tool", "get_company_news", "get_current_stock_price", "huge_tool", "show_on_screen", "sleep_tool",
        "slow_tool", "unserializable_tool"]
    assert guided["prompt_tail"].endswith("<|im_start|>assistant\n<tool_call>\n")
    assert "guided_decoding_guide_type" not in after["inputs"]  # only the first turn is constrained
    record("tool_choice required", [
        "request: messages=[user '[required] RIVN?'], tools=[show_on_screen], tool_choice='required'",
        "without tool_choice the scripted model answers: 'I would rather chat.'",
        f"engine turn 0 got guided_decoding_guide_type={guided['inputs']['guided_decoding_guide_type']!r}, prompt "
        f"ending {guided['prompt_tail'][-40:]!r}",
        f"tool_trace.tool_calls: {reply.tool_trace['tool_calls']}",
        f"answer: {reply.choices[0].message.content!r} finish_reason={reply.choices[0].finish_reason}"])


def test_a_named_tool_choice_returns_that_client_call(client, stack):
    reply = client.chat.completions.create(
        model=MODEL, messages=user("[named] anything"), tools=[SCREEN_TOOL],
        tool_choice={"type": "function", "function": {"name": "show_on_screen"}})
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert choice.message.tool_calls[0].function.name == "show_on_screen"
    assert json.loads(choice.message.tool_calls[0].function.arguments) == {"text": "forced"}
    schema = json.loads(engine_log(stack, "named")[-1]["inputs"]["guided_decoding_guide"])
    assert schema["properties"]["name"] == {"const": "show_on_screen"}


def test_tool_choice_none_bans_the_call_tag(client, stack, tokenizer):
    reply = client.chat.completions.create(model=MODEL, messages=user("[none] 6 x 7?"), tools=[SCREEN_TOOL],
                                           tool_choice="none")
    assert reply.choices[0].message.content == "No tools needed: 42."
    tag = tokenizer.convert_tokens_to_ids("<tool_call>")
    assert engine_log(stack, "none")[-1]["inputs"]["bad_words_list"] == [[tag], [1]]


def test_parallel_tool_calls_false_ends_the_turn_at_the_first_call(client, stack):
    reply = client.chat.completions.create(model=MODEL, messages=user("[parallel] price and news"),
                                           parallel_tool_calls=False, extra_body={"return_tool_trace": True})
    assert [c["name"] for c in reply.tool_trace["tool_calls"]] == ["get_current_stock_price"]
    assert reply.tool_trace["turns"][0]["ended"] == "first_call"
    assert reply.choices[0].message.content.startswith('Got {"name": "get_current_stock_price"')
    both = client.chat.completions.create(model=MODEL, messages=user("[parallel] price and news"),
                                          extra_body={"return_tool_trace": True})
    assert [c["name"] for c in both.tool_trace["tool_calls"]] == ["get_current_stock_price", "get_company_news"]


def test_a_setting_the_engine_cannot_honour_is_a_400(stack):
    qwen3 = openai.OpenAI(base_url=stack["qwen3"].base_url, api_key="unused", max_retries=0, timeout=60)
    with pytest.raises(openai.BadRequestError) as info:
        qwen3.chat.completions.create(model="qwen3-agent", messages=user("hi"), tools=[SCREEN_TOOL],
                                      tool_choice="required")
    assert info.value.status_code == 400
    error = info.value.body
    assert "tool_choice 'required' is not supported by the engine model: it needs guided decoding" \
        in error["message"] and error["type"] == "invalid_request_error"
    record("400 for a setting the engine cannot honour (an engine without guided-decoding inputs)", [
        "request: tools=[show_on_screen], tool_choice='required'",
        f"-> HTTP {info.value.status_code}: {json.dumps({'error': error})}"])


# ---- reasoning -------------------------------------------------------------------------------------------------

def test_reasoning_arrives_as_reasoning_content(stack):
    qwen3 = openai.OpenAI(base_url=stack["qwen3"].base_url, api_key="unused", max_retries=0, timeout=60)
    chunks = list(qwen3.chat.completions.create(model="qwen3-agent", messages=user("hello"), stream=True,
                                                stream_options={"include_usage": True}))
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert reasoning == "The user greets me; greet back." and content == "Hello!"
    assert len([c for c in chunks if c.choices and getattr(c.choices[0].delta, "reasoning_content", None)]) > 1
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens > 0
    reply = qwen3.chat.completions.create(model="qwen3-agent", messages=user("hello"))
    assert reply.choices[0].message.reasoning_content == "The user greets me; greet back."
    assert reply.choices[0].message.content == "Hello!"


# ---- API key, errors, sampling ---------------------------------------------------------------------------------

def test_the_api_key_is_required_on_every_request(stack):
    for key in ("wrong-key", ""):
        bad = openai.OpenAI(base_url=stack["gateway"].base_url, api_key=key or "x", max_retries=0,
                            default_headers={} if key else {"Authorization": ""})
        with pytest.raises(openai.AuthenticationError) as info:
            bad.chat.completions.create(model=MODEL, messages=user("[answer] hi"))
        assert info.value.body["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
    assert requests.get(stack["gateway"].base_url + "/models", timeout=10).status_code == 401


@pytest.mark.parametrize("extra, status, fragment", [
    ({"model": "gpt-4o"}, 404, "the model 'gpt-4o' does not exist"),
    ({"n": 2}, 400, "n must be 1"),
    ({"logprobs": True}, 400, "logprobs are not returned"),
    ({"response_format": {"type": "json_object"}}, 400, "response_format"),
    ({"frobnicate": 1}, 400, "unrecognized request argument(s): frobnicate"),
    ({"temperature": "hot"}, 400, "temperature must be a number"),
    ({"temperature": 500.0}, 400, "temperature must be in [0, 100]"),  # from the agent's contract
    ({"max_tokens": 0}, 400, "max_tokens must be between 1 and"),
    ({"tool_choice": "always"}, 400, 'tool_choice must be "auto", "none", "required"'),
])
def test_bad_requests_get_openai_errors(client, extra, status, fragment):
    body = {"model": MODEL, "messages": user("[answer] hi"), **extra}
    response = requests.post(client.base_url.join("chat/completions"), json=body, timeout=30,
                             headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert fragment in error["message"] and set(error) == {"message", "type", "param", "code"}


def test_an_engine_failure_is_a_503(client):
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model=MODEL, messages=user("[engine-fail] hi"))
    assert info.value.status_code == 503 and info.value.body["message"].startswith("the engine is unavailable")
    assert info.value.body["type"] == "server_error"


def test_sampling_settings_reach_the_engine(client, stack):
    client.chat.completions.create(model=MODEL, messages=user("[sampling] go"), temperature=0.5, top_p=0.9, seed=7,
                                   presence_penalty=0.25, frequency_penalty=0.5, max_completion_tokens=33,
                                   stop=["END"], extra_body={"top_k": 5, "repetition_penalty": 1.1})
    inputs = engine_log(stack, "sampling")[-1]["inputs"]
    assert inputs["temperature"] == 0.5 and inputs["runtime_top_k"] == 5 and inputs["random_seed"] == 7
    assert abs(inputs["runtime_top_p"] - 0.9) < 1e-6 and inputs["presence_penalty"] == 0.25
    assert inputs["frequency_penalty"] == 0.5 and abs(inputs["repetition_penalty"] - 1.1) < 1e-6
    assert inputs["request_output_len"] == 33


# ---- a client that goes away -------------------------------------------------------------------------------------

def test_closing_the_stream_cancels_the_run_and_stops_the_engine_turn(client, stack, tokenizer):
    metrics = stack["server"].metrics_url
    before = settled(metrics)
    stream = client.chat.completions.create(model=MODEL, messages=user("[slow] tell me"), stream=True)
    received = ""
    for chunk in stream:
        received += chunk.choices[0].delta.content or "" if chunk.choices else ""
        if len(received) > 10:
            break
    stream.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ends = engine_log(stack, "slow", "end")
        if ends:
            break
        time.sleep(0.1)
    (end,) = engine_log(stack, "slow", "end")
    whole_turn = len(tokenizer.encode(SCENARIOS[8]["turns"][0], add_special_tokens=False))
    assert end["end"] == "stopped" and end["tokens_sent"] < whole_turn  # stopped before the turn was done
    assert [s for s in engine_log(stack, "slow", "stop") if s["request_id"] == end["request_id"]]
    after = settled(metrics)
    assert value(after, "fca_requests_total", outcome="cancelled") - \
        value(before, "fca_requests_total", outcome="cancelled") == 1
