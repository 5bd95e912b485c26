"""The model families end to end on a real tritonserver: function_calling_agent over a scripted engine per family,
each with that family's tokenizer and template (tests/support/model_families.py says which behaviours of the real
checkpoints each one reproduces)."""

from __future__ import annotations

import json

import pytest

from function_calling_agent.scripted_engine.repository import make_scripted_engine, read_request_log
from tests.support.agent_repo import make_agent_model
from tests.support.fca_client import http_generate, make_inputs, stream_request
from tests.support.model_families import FAMILIES, build_family_tokenizer
from tests.support.triton_server import TritonServerFactory

pytestmark = pytest.mark.integration


def call(name: str, **arguments) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def think(family: str, reasoning: str, rest: str) -> str:
    spec = FAMILIES[family]
    if not spec.reasoning:
        return rest
    return (f"{reasoning}\n</think>\n\n" if spec.opens_think else f"<think>\n{reasoning}\n</think>\n\n") + rest


def script(family: str) -> dict:
    return {"scenarios": [
        {"name": "two", "match": "TWO_CALLS", "turns": [
            think(family, "Price first.", call("get_current_stock_price", symbol="RIVN")),
            think(family, "Then news.", call("get_company_news", symbol="RIVN")),
            think(family, "Both in.", "RIVN: {tool_response}")]},
        {"name": "no_think", "match": "NO_THINK", "turns": ["Plain answer."]},
        {"name": "eot", "match": "ENDOFTEXT", "emit_end_id": False,
         "turns": [think(family, "Short.", "The answer.<|endoftext|>Human: and the model ran on")]},
    ], "default_turns": [think(family, "Hm.", "Hello.")]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("families-repo")
    tokenizer_dirs = {}
    for family in FAMILIES:
        tokenizer_dir = build_family_tokenizer(tmp_path_factory.mktemp(family.replace(".", "")), family)
        tokenizer_dirs[family] = tokenizer_dir
        engine = f"engine_{family.replace('.', '')}"
        make_scripted_engine(repo, script(family), tokenizer_dir, model_name=engine, token_latency_ms=1)
        make_agent_model(repo, tokenizer_dir, model_name=f"agent_{family.replace('.', '')}",
                         parameters={"tensorrt_llm_model_name": engine})
    factory = TritonServerFactory(tmp_path_factory.mktemp("families-logs"))
    try:
        running = factory(repo)
        running.repo, running.tokenizer_dirs = repo, tokenizer_dirs
        yield running
    finally:
        factory.stop_all()


def ask(server, family: str, text: str, **extra):
    inputs = make_inputs({"text_input": text, "max_tokens": 256, "stream": True, "return_trace": True, **extra})
    return stream_request(server.grpc_url, inputs, model=f"agent_{family.replace('.', '')}", timeout=60)


def engine_log(server, family: str) -> list[dict]:
    return read_request_log(server.repo / f"engine_{family.replace('.', '')}")


@pytest.mark.parametrize("family", FAMILIES)
def test_a_two_call_loop_runs_with_the_models_own_template(server, family):
    outcome = ask(server, family, "TWO_CALLS for RIVN", return_reasoning=True)
    assert outcome.error is None and outcome.finals == 1, outcome
    assert outcome.finish_reason == "stop"
    text = "".join(outcome.deltas)
    assert text.startswith("RIVN: ") and "12.34" not in text  # the last result is the news
    for markup in ("<tool_call>", "<think>", "</think>", "<tool_response>", "<|im_end|>"):
        assert markup not in text
    assert [(c["name"], c["status"]) for c in outcome.trace["tool_calls"]] == [
        ("get_current_stock_price", "ok"), ("get_company_news", "ok")]
    reasoning = "".join(outcome.reasoning_deltas)
    usage = outcome.final["usage"]
    if FAMILIES[family].reasoning:
        assert reasoning == "Price first.\n\nThen news.\n\nBoth in." and usage["reasoning_tokens"] > 0
        assistant = [m for m in outcome.trace["messages"] if m["role"] == "assistant"]
        assert [m.get("reasoning_content") for m in assistant] == ["Price first.", "Then news.", "Both in."]
    else:
        assert reasoning == "" and usage["reasoning_tokens"] == 0
    starts = [e for e in engine_log(server, family) if e["event"] == "start" and e["scenario"] == "two"]
    tail = starts[-1]["prompt_tail"]
    opens = "<|im_start|>assistant\n<think>\n" if FAMILIES[family].opens_think else "<|im_start|>assistant\n"
    assert tail.endswith("</tool_response><|im_end|>\n" + opens)  # tool results, then the generation prompt


def test_narrowing_tools_to_none_works_with_a_template_that_loops_over_tools(server):
    outcome = ask(server, "hermes_tool_use", "say hello", tools=json.dumps([]))
    assert outcome.error is None and "".join(outcome.deltas) == "Hello."


def test_reasoning_comes_in_the_final_response_when_not_streaming(server):
    status, body = http_generate(server.http_url, {"text_input": "hi", "max_tokens": 64, "stream": False,
                                                   "return_reasoning": True}, model="agent_qwen3")
    assert status == 200, body
    assert body["text_output"] == "Hello." and body["reasoning_output"] == "Hm."
    assert json.loads(body["usage"])["reasoning_tokens"] > 0
    status, body = http_generate(server.http_url, {"text_input": "hi", "max_tokens": 64, "stream": False},
                                 model="agent_qwen3")
    assert status == 200 and "reasoning_output" not in body and body["text_output"] == "Hello."


def test_thinking_is_switched_per_request_where_the_template_has_the_switch(server):
    outcome = ask(server, "qwen3", "NO_THINK please", enable_thinking=False)
    assert outcome.error is None and "".join(outcome.deltas) == "Plain answer."
    start = [e for e in engine_log(server, "qwen3") if e["event"] == "start" and e["scenario"] == "no_think"][-1]
    assert start["prompt_tail"].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    refused = ask(server, "qwen2.5", "hi", enable_thinking=False)
    assert refused.finals == 1 and "enable_thinking: this model's chat template has no thinking switch" in refused.error


@pytest.mark.parametrize("family", ["qwen2.5", "qwen3"])
def test_the_second_end_id_ends_the_turn_and_the_engine_is_told(server, family):
    from transformers import AutoTokenizer

    outcome = ask(server, family, "ENDOFTEXT now")
    assert outcome.error is None and outcome.finish_reason == "stop"
    assert "".join(outcome.deltas) == "The answer."  # what followed <|endoftext|> never reached the client
    assert outcome.final["usage"]["engine_turns"] == 1
    start = [e for e in engine_log(server, family) if e["event"] == "start" and e["scenario"] == "eot"][-1]
    ids, offsets = start["inputs"]["stop_words_list"]  # TRT-LLM's [2, L] word list: ids, then end offsets
    words = [tuple(ids[a:b]) for a, b in zip([0] + offsets, [o for o in offsets if o >= 0])]
    tokenizer = AutoTokenizer.from_pretrained(server.tokenizer_dirs[family])
    assert (tokenizer.convert_tokens_to_ids("<|endoftext|>"),) in words
    stops = [e for e in engine_log(server, family) if e["event"] == "stop" and e["request_id"] == start["request_id"]]
    assert stops, "the agent stops an engine that did not end the turn by itself"


def test_a_template_that_cannot_be_used_fails_loading_with_what_to_set(triton_server_factory, tmp_path):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    from function_calling_agent.chat_format import BUILTIN_HERMES_TEMPLATE
    from function_calling_agent.offline_models.hermes_tokenizer import build_hermes_tokenizer

    bare = build_hermes_tokenizer(tmp_path / "no-template", with_chat_template=False)
    jinja = tmp_path / "hermes.jinja"
    jinja.write_text(BUILTIN_HERMES_TEMPLATE, encoding="utf-8")
    repo = tmp_path / "repo"
    make_scripted_engine(repo, {"default_turns": ["Hi."]}, bare)
    make_agent_model(repo, bare, model_name="no_template")
    make_agent_model(repo, bare, model_name="builtin_template", parameters={"chat_template": "builtin"})
    make_agent_model(repo, bare, model_name="file_template", parameters={"chat_template": str(jinja)})
    server = triton_server_factory(repo, model_control_mode="explicit", load_models=["tensorrt_llm"])
    client = httpclient.InferenceServerClient(server.http_url)
    with pytest.raises(InferenceServerException) as failed:
        client.load_model("no_template")
    assert "the tokenizer has no chat template: set the chat_template parameter to 'builtin'" in str(failed.value)
    for name, source in (("builtin_template", "template=builtin"), ("file_template", f"template=file:{jinja}")):
        client.load_model(name)
        assert client.is_model_ready(name)
        assert source in server.log_text()
        outcome = stream_request(server.grpc_url, make_inputs({"text_input": "hi", "max_tokens": 16}), model=name)
        assert outcome.error is None and outcome.text == "Hi."
