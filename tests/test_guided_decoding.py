"""Guided decoding on the CPU engine (llguidance, TensorRT-LLM's guide types) and tool_choice through the agent on a
real tritonserver: a tiny random model that never calls tools on its own makes exactly the call the guide allows."""

from __future__ import annotations

import json
import re

import jsonschema
import numpy as np
import pytest
import torch

from deploy.configure_repository import configure
from function_calling_agent.cpu_engine import FinishReason, GenerationEngine, GenerationRequest, parse_request
from function_calling_agent.cpu_engine.guided import GuideCompiler, GuideError
from function_calling_agent.tool_choice import call_object_schema
from function_calling_agent.tools.client import client_tool_specs
from tests.support.agent_repo import TEST_TOOL_MODULES
from tests.support.fca_client import make_inputs, stream_request

DIGIT_TOOL = [{"type": "function", "function": {
    "name": "pick_digit", "description": "Picks a digit.",
    "parameters": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
                   "required": ["n"], "additionalProperties": False}}}]
PROMPT = (1, 17, 42, 99, 123, 7, 300, 12, 55, 801, 64, 33)


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


@pytest.fixture(scope="module")
def engine(tiny_llama_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    engine = GenerationEngine(model, guides=GuideCompiler(tokenizer, model.config.vocab_size))
    yield engine
    engine.close()


def end_id(tokenizer) -> int:
    return tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_a_json_schema_guide_yields_a_conforming_call_object_then_the_end_id(engine, tokenizer):
    schema = call_object_schema(client_tool_specs(DIGIT_TOOL)[0])
    unguided = engine.generate(GenerationRequest(PROMPT, 40, end_id=end_id(tokenizer)))
    with pytest.raises(ValueError):  # the random model writes no JSON on its own
        json.loads(tokenizer.decode(unguided.token_ids))
    result = engine.generate(GenerationRequest(PROMPT, 200, end_id=end_id(tokenizer),
                                               guide=("json_schema", json.dumps(schema))))
    assert result.finish_reason is FinishReason.END_ID
    value = json.loads(tokenizer.decode(result.token_ids))
    jsonschema.validate(value, schema)
    assert value["name"] == "pick_digit" and 0 <= value["arguments"]["n"] <= 9


@pytest.mark.parametrize("guide", [("regex", "[0-9]{3}"), ("ebnf_grammar", 'root ::= "yes" | "no"'), ("json", "")])
def test_the_other_tensorrt_llm_guide_types(engine, tokenizer, guide):
    result = engine.generate(GenerationRequest(PROMPT, 60, end_id=end_id(tokenizer), guide=guide))
    text = tokenizer.decode(result.token_ids)
    if guide[0] == "json" and result.finish_reason is FinishReason.LENGTH:
        # any JSON value: a random model may write a number that never ends; every token still fits JSON
        assert re.fullmatch(r'[-0-9.eE+]+|[\[{"].*', text, re.S), text
        return
    assert result.finish_reason is FinishReason.END_ID, text
    if guide[0] == "regex":
        assert re.fullmatch("[0-9]{3}", text)
    elif guide[0] == "ebnf_grammar":
        assert text in ("yes", "no")
    else:
        json.loads(text)


@pytest.mark.parametrize("guide, message", [
    (("xml", "<a/>"), "guided_decoding_guide_type must be one of"),
    (("json_schema", "{not json"), "not a valid json_schema guide"),
    (("regex", "(unclosed"), "not a valid regex guide"),
])
def test_a_bad_guide_is_refused_with_what_to_change(engine, guide, message):
    with pytest.raises(GuideError, match=message):
        engine.submit(GenerationRequest(PROMPT, 10, end_id=3, guide=guide), lambda update: None)


def test_the_llama_cpp_engine_honours_the_same_guide(tiny_llama_gguf, tokenizer):
    from function_calling_agent.llamacpp_engine.binding import ContextSettings, LlamaModel
    from function_calling_agent.llamacpp_engine.engine import LlamaCppEngine

    model = LlamaModel(tiny_llama_gguf, ContextSettings(n_ctx=1024, n_seq_max=1, n_batch=65, n_threads=1,
                                                        n_threads_batch=1, kv_cache_type="f32"))
    engine = LlamaCppEngine(model, prefill_chunk_tokens=64, guides=GuideCompiler(tokenizer, model.n_vocab))
    try:
        schema = call_object_schema(client_tool_specs(DIGIT_TOOL)[0])
        result = engine.generate(GenerationRequest(PROMPT, 200, end_id=end_id(tokenizer),
                                                   guide=("json_schema", json.dumps(schema))), timeout=120)
        assert result.finish_reason is FinishReason.END_ID
        jsonschema.validate(json.loads(tokenizer.decode(result.token_ids)), schema)
        with pytest.raises(GuideError, match="not a valid regex guide"):
            engine.submit(GenerationRequest(PROMPT, 10, end_id=3, guide=("regex", "(")), lambda update: None)
    finally:
        engine.close()


def test_parse_request_reads_the_guide_inputs():
    arrays = {"input_ids": np.array([[1, 2]], np.int32), "request_output_len": np.array([[4]], np.int32),
              "guided_decoding_guide_type": np.array([[b"json_schema"]], object),
              "guided_decoding_guide": np.array([[b'{"type": "object"}']], object)}
    assert parse_request(arrays).generation.guide == ("json_schema", '{"type": "object"}')


# ---- through the agent on a real tritonserver --------------------------------------------------------------------

@pytest.fixture(scope="module")
def cpu_server(tmp_path_factory, tiny_llama_dir):
    from tests.support.triton_server import TritonServerFactory

    out = tmp_path_factory.mktemp("guided-cpu") / "model_repository"
    configure("cpu", out, {"tokenizer_dir": tiny_llama_dir, "model_dir": tiny_llama_dir,
                           "tool_modules": "scripted_tools", "tool_path": str(TEST_TOOL_MODULES)})
    engine_config = out / "tensorrt_llm" / "config.pbtxt"
    text, count = re.subn(r'(key:\s*"torch_threads"\s*value:\s*\{\s*string_value:\s*)"[^"]*"', r'\1"1"',
                          engine_config.read_text(encoding="utf-8"))
    assert count == 1
    engine_config.write_text(text, encoding="utf-8")
    factory = TritonServerFactory(tmp_path_factory.mktemp("guided-logs"))
    try:
        yield factory(out)
    finally:
        factory.stop_all()


@pytest.mark.integration
def test_tool_choice_makes_a_random_model_call_the_named_client_tool(cpu_server):
    choice = json.dumps({"type": "function", "function": {"name": "pick_digit"}})
    outcome = stream_request(cpu_server.grpc_url, make_inputs({
        "text_input": "Pick a digit.", "max_tokens": 200, "stream": True, "return_trace": True,
        "client_tools": json.dumps(DIGIT_TOOL), "tool_choice": choice}), timeout=240)
    assert outcome.error is None and outcome.finals == 1, outcome
    assert outcome.finish_reason == "tool_calls", outcome.final
    (pending,) = outcome.final["tool_calls"]
    assert pending["function"]["name"] == "pick_digit"
    assert 0 <= json.loads(pending["function"]["arguments"])["n"] <= 9


@pytest.mark.integration
def test_tool_choice_required_makes_a_random_model_call_a_server_tool(cpu_server):
    outcome = stream_request(cpu_server.grpc_url, make_inputs({
        "text_input": "Anything.", "max_tokens": 120, "stream": True, "return_trace": True,
        "tools": json.dumps(["huge_tool", "unserializable_tool"]), "tool_choice": "required", "max_iterations": 1}),
        timeout=240)
    assert outcome.error is None and outcome.finals == 1, outcome
    first = outcome.trace["tool_calls"][0]
    assert first["turn"] == 0 and first["arguments"] == {}
    assert (first["name"], first["status"]) in (("huge_tool", "ok"), ("unserializable_tool", "error"))

