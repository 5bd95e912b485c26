"""The cpu profile end to end: configure_repository's output on a real tritonserver, function_calling_agent over
either CPU engine (torch, and llama.cpp on the same weights converted to GGUF), with a tiny model trained to call two
tools and answer (function_calling_agent.offline_models.tiny_tool_model), and the README's main command
(`python -m deploy.serve`) started and stopped as a user would: the plumbing check, and the offline demo (the tiny
model trained on the finance tools, which fail fast offline).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from deploy.configure_repository import configure
from deploy.triton_launcher import free_port
from function_calling_agent.offline_models.tiny_tool_model import (
    Conversation,
    ToolVariant,
    agent_transcripts,
    build_tiny_tool_model,
)
from function_calling_agent.tools import load_tool_modules
from tests.support.agent_repo import TEST_TOOL_MODULES
from tests.support.fca_client import http_generate, make_inputs, stream_request
from tests.support.serve_process import ServeRun

pytestmark = pytest.mark.integration

TURNS_REPORT = "/tmp/fca_cpu_profile_turns_{engine}.txt"
MARKUP = ("<tool_call>", "</tool_call>", "<tool_response>", "<|im_end|>", "<|im_start|>")

# Three engine turns: a price call, a news call after the price result, the answer after the news result.
USER_PROMPT = "Give me Rivian (RIVN) news and stock price"
TOOL_CALLS = ("get_current_stock_price", "get_company_news")
FINAL_ANSWER = "RIVN trades at 12.34 USD. News: RIVN ships more trucks."
CONVERSATION = Conversation("rivn", USER_PROMPT, (
    '<tool_call>\n{"name": "get_current_stock_price", "arguments": {"symbol": "RIVN"}}\n</tool_call>',
    '<tool_call>\n{"name": "get_company_news", "arguments": {"symbol": "RIVN"}}\n</tool_call>',
    FINAL_ANSWER,
))


def scripted_tools() -> ToolVariant:
    return ToolVariant("scripted", load_tool_modules(["scripted_tools"], [str(TEST_TOOL_MODULES)]))


@pytest.fixture(scope="module")
def tool_model_dir(tmp_path_factory, hermes_tokenizer_dir) -> str:
    return build_tiny_tool_model(tmp_path_factory.mktemp("tiny-tool-model"), hermes_tokenizer_dir, [CONVERSATION],
                                 [scripted_tools()])


@pytest.fixture(scope="module", params=["torch", "llamacpp"])
def cpu_repository(request, tmp_path_factory, tool_model_dir) -> tuple[str, Path]:
    engine = request.param
    out = tmp_path_factory.mktemp(f"cpu-profile-{engine}") / "model_repository"
    values = {"tokenizer_dir": tool_model_dir, "tool_modules": "scripted_tools", "tool_path": str(TEST_TOOL_MODULES)}
    if engine == "torch":
        values["model_dir"] = tool_model_dir
    else:
        from function_calling_agent.llamacpp_engine.convert import write_gguf

        # float32: the trained margins (offline_models.tiny_tool_model.MIN_MARGIN) survive the f16 KV cache.
        gguf = write_gguf(tool_model_dir, tmp_path_factory.mktemp("tiny-tool-gguf") / "tool-model-f32.gguf", "f32")
        values.update(engine="llamacpp", gguf_path=str(gguf))
    configure("cpu", out, values)
    engine_config = out / "tensorrt_llm" / "config.pbtxt"
    text = engine_config.read_text(encoding="utf-8")
    # two cores shared with the test process and the agent
    text, count = re.subn(r'(key:\s*"(?:torch_threads|threads)"\s*value:\s*\{\s*string_value:\s*)"[^"]*"', r'\1"1"',
                          text)
    assert count == 1, "could not set the threads in the generated engine config"
    engine_config.write_text(text, encoding="utf-8")
    return engine, out


def _json_field(value):
    return json.loads(value) if isinstance(value, str) else value


def _check_conversation(label: str, finish_reason: str, text: str, usage: dict, trace: dict, expected_prompts):
    assert finish_reason == "stop", (label, usage, trace)
    assert text == FINAL_ANSWER, (label, text)
    assert not any(tag in text for tag in MARKUP), (label, text)
    assert usage["engine_turns"] == 3, (label, usage)
    assert usage["tool_calls"] == 2 and usage["iterations"] == 2, (label, usage)
    calls = [(c["name"], c["status"]) for c in trace["tool_calls"]]
    assert calls == [(name, "ok") for name in TOOL_CALLS], (label, trace["tool_calls"])
    turns = trace["turns"]
    assert len(turns) == 3, (label, turns)
    # The served agent sends exactly the prompts the model was trained on.
    assert [t["prompt_tokens"] for t in turns] == [len(p) for p in expected_prompts], (label, turns)
    for previous, turn in zip(turns, turns[1:]):
        # The next prompt extends the previous prompt and its generated ids token for token, so the engine's prefix
        # cache covers at least the whole previous prompt.
        assert turn["prompt_tokens"] >= previous["prompt_tokens"] + previous["generated_tokens"], (label, turns)
        assert previous["prompt_tokens"] <= turn["reused_prompt_tokens"] < turn["prompt_tokens"], (label, turns)
    assert usage["reused_prompt_tokens"] == sum(t["reused_prompt_tokens"] for t in turns), (label, usage)
    return [(t["prompt_tokens"], t["generated_tokens"], t["reused_prompt_tokens"]) for t in turns]


def test_cpu_profile_runs_three_turns_with_prefix_reuse(triton_server_factory, cpu_repository, tool_model_dir):
    from transformers import AutoTokenizer

    engine, repository = cpu_repository
    transcript = agent_transcripts(AutoTokenizer.from_pretrained(tool_model_dir), [CONVERSATION], scripted_tools())
    expected_prompts = transcript["rivn"].prompts
    server = triton_server_factory(repository)

    # First request on a fresh server: nothing cached, so turn 1 reuses nothing.
    status, body = http_generate(server.http_url, {"text_input": USER_PROMPT, "max_tokens": 64, "stream": False,
                                                   "return_trace": True}, timeout=120)
    assert status == 200, body
    http_turns = _check_conversation("http generate", body["finish_reason"], body["text_output"],
                                     _json_field(body["usage"]), _json_field(body["tool_trace"]), expected_prompts)
    assert http_turns[0][2] == 0, http_turns

    # Second request, streamed over gRPC: the cache is shared across requests, so turn 1 reuses the same prompt.
    outcome = stream_request(server.grpc_url, make_inputs({"text_input": USER_PROMPT, "max_tokens": 64,
                                                           "stream": True, "return_trace": True}), timeout=120)
    assert outcome.error is None and outcome.finals == 1, outcome
    assert outcome.final["text_output"] == "", outcome.final  # streamed: the final response carries no text
    streamed = "".join(outcome.deltas)
    grpc_turns = _check_conversation("grpc stream", outcome.finish_reason, streamed, outcome.final["usage"],
                                     outcome.trace, expected_prompts)
    assert streamed == body["text_output"]
    assert 0 < grpc_turns[0][2] < grpc_turns[0][0], grpc_turns

    lines = [f"{engine} engine, per engine turn: (prompt_tokens, generated_tokens, reused_prompt_tokens)"]
    for label, turns in (("HTTP generate, fresh server", http_turns), ("gRPC stream, second request", grpc_turns)):
        lines.append(f"{label}:")
        lines += [f"  turn {i + 1}: prompt={p} generated={g} reused={r}" for i, (p, g, r) in enumerate(turns)]
    report = "\n".join(lines) + "\n"
    print("\n" + report)
    Path(TURNS_REPORT.format(engine=engine)).write_text(report, encoding="utf-8")


TRTLLM_REUSE_REPORT = Path("/tmp/fca_trtllm_reuse_turns.txt")
BLOCK = 8  # tokens per KV-cache block of the TensorRT-LLM-shaped engine


@pytest.fixture(scope="module")
def trtllm_shaped_repository(tmp_path_factory, tool_model_dir) -> Path:
    """The cpu profile plus a second CPU engine that reports prompt reuse only as TensorRT-LLM 1.0.0 does
    (`kv_cache_reused_blocks`, no `prefix_reused_tokens`), and an agent on it that converts blocks to tokens."""
    from function_calling_agent.model_config import set_parameter

    out = tmp_path_factory.mktemp("trtllm-shaped") / "model_repository"
    configure("cpu", out, {"tokenizer_dir": tool_model_dir, "model_dir": tool_model_dir,
                           "tool_modules": "scripted_tools", "tool_path": str(TEST_TOOL_MODULES)})
    for name in ("tensorrt_llm", "function_calling_agent"):
        shutil.copytree(out / name, out / f"{name}_trt")
    engine = out / "tensorrt_llm_trt" / "config.pbtxt"
    text, removed = re.subn(r',\s*\{\s*name:\s*"prefix_reused_tokens"[^}]*\}', "", engine.read_text(encoding="utf-8"))
    assert removed == 1
    text = re.sub(r'^name: .*$', 'name: "tensorrt_llm_trt"', text, count=1, flags=re.M)
    for engine_config in (engine, out / "tensorrt_llm" / "config.pbtxt"):
        engine_text = text if engine_config == engine else engine_config.read_text(encoding="utf-8")
        for key, value in (("kv_cache_block_size", str(BLOCK)), ("torch_threads", "1")):
            engine_text = set_parameter(engine_text, key, value)
        engine_config.write_text(engine_text, encoding="utf-8")
    agent = out / "function_calling_agent_trt" / "config.pbtxt"
    text = re.sub(r'^name: .*$', 'name: "function_calling_agent_trt"', agent.read_text(encoding="utf-8"), count=1,
                  flags=re.M)
    for key, value in (("tensorrt_llm_model_name", "tensorrt_llm_trt"), ("kv_cache_tokens_per_block", str(BLOCK))):
        text = set_parameter(text, key, value)
    agent.write_text(text, encoding="utf-8")
    return out


def test_trtllm_shaped_reuse_is_reported_in_tokens(triton_server_factory, trtllm_shaped_repository):
    # The same requests to two identical CPU engines: one reports reuse in tokens, the other only in TensorRT-LLM's
    # blocks, which the agent turns into tokens (whole blocks, never the prompt's last token).
    server = triton_server_factory(trtllm_shaped_repository)
    rows = []
    for attempt in ("fresh server", "second request"):
        turns = {}
        for model in ("function_calling_agent", "function_calling_agent_trt"):
            outcome = stream_request(server.grpc_url, make_inputs({"text_input": USER_PROMPT, "max_tokens": 64,
                                                                   "stream": True, "return_trace": True}),
                                     model=model, timeout=120)
            assert outcome.error is None and outcome.finish_reason == "stop", outcome
            turns[model] = outcome.trace["turns"]
            assert outcome.final["usage"]["reused_prompt_tokens"] == sum(
                t["reused_prompt_tokens"] for t in turns[model])
        for exact, blocks in zip(turns["function_calling_agent"], turns["function_calling_agent_trt"]):
            assert exact["prompt_tokens"] == blocks["prompt_tokens"], (exact, blocks)
            expected = min(exact["reused_prompt_tokens"] // BLOCK * BLOCK, exact["prompt_tokens"] - 1)
            assert blocks["reused_prompt_tokens"] == expected, (exact, blocks)
            rows.append(f"  {attempt}: prompt={exact['prompt_tokens']} reused: exact={exact['reused_prompt_tokens']} "
                        f"from blocks={blocks['reused_prompt_tokens']} ({blocks['reused_prompt_tokens'] // BLOCK} "
                        f"blocks of {BLOCK})")
    assert any(int(r.split("from blocks=")[1].split()[0]) > 0 for r in rows)  # reuse was seen, not just zeros
    report = "per engine turn, TensorRT-LLM-shaped engine (kv_cache_reused_blocks) vs exact tokens:\n" + \
        "\n".join(rows) + "\n"
    print("\n" + report)
    TRTLLM_REUSE_REPORT.write_text(report, encoding="utf-8")


def test_serve_plumbing_check_answers_and_stops_on_sigterm(tmp_path):
    run = ServeRun.module(tmp_path, ["--plumbing-check", "--no-demo"], {})
    try:
        line = run.wait_for_line("serve: ready", 240)
        assert f":{run.ports['http']}" in line, line
        status, body = http_generate(f"127.0.0.1:{run.ports['http']}", {"text_input": "Give me Rivian (RIVN) news",
                                                                         "max_tokens": 16}, timeout=120)
        assert status == 200, body
        assert body["finish_reason"] in ("stop", "length", "incomplete"), body
        assert run.stop() == 0, run.text
    finally:
        run.kill()


# The first run trains the demo model: about two minutes on two shared cores, more on a very busy machine.
@pytest.mark.timeout(900)
def test_serve_offline_shows_a_tool_round_the_relayed_error_and_a_continuation(tmp_path):
    from function_calling_agent.offline_models.finance_demo import ANSWERS, DEMO_PROMPT, FOLLOW_UP_PROMPT

    dead = f"http://127.0.0.1:{free_port()}"
    # No hub, and no Yahoo either on any machine: both are asked through a proxy that refuses connections. Requests
    # to the local server must not go through it.
    run = ServeRun.module(tmp_path, [], {"HF_ENDPOINT": dead, "HTTPS_PROXY": dead, "HTTP_PROXY": dead, "NO_PROXY": ""})
    try:
        run.wait_for_line("serve: serving until Ctrl-C", 800)
        text = run.text
        notices = [line for line in text.splitlines() if "TINY OFFLINE MODEL" in line]
        assert len(notices) == 1, text
        assert notices[0].startswith("serve: no checkpoint: the Hugging Face hub is unreachable (")
        assert "./serve.sh --model /path/to/checkpoint" in notices[0]

        first = text[text.index("serve: demo request 1"):text.index("serve: demo request 2")]
        assert json.dumps(DEMO_PROMPT) in first
        assert f"  answer: {ANSWERS[0]}\n" in first, first
        for tool in TOOL_CALLS:  # both finance tools ran, in one turn, and failed fast
            assert re.search(rf'tool call: {tool}\(\{{"symbol": "RIVN"\}}\) -> error: ToolError: market data is '
                             rf"unreachable: curl: \(\d+\) ", first), first
        assert "2 engine turns, 2 tool calls" in first, first

        second = text[text.index("serve: demo request 2"):text.index("serve: serving until Ctrl-C")]
        assert "tool_trace.messages" in second and json.dumps(FOLLOW_UP_PROMPT) in second, second
        assert f"  answer: {ANSWERS[1]}\n" in second, second
        assert re.search(r'tool call: get_current_stock_price\(\{"symbol": "TSLA"\}\) -> error: ToolError: market '
                         r"data is unreachable: ", second), second

        # Still serving: a request of our own gets the same tool round.
        status, body = http_generate(f"127.0.0.1:{run.ports['http']}", {"text_input": DEMO_PROMPT, "max_tokens": 64,
                                                                         "return_trace": True}, timeout=120)
        assert status == 200, body
        assert body["text_output"] == ANSWERS[0], body
        trace = json.loads(body["tool_trace"])
        assert [(c["name"], c["status"]) for c in trace["tool_calls"]] == [(t, "error") for t in TOOL_CALLS], trace
        assert run.stop() == 0, run.text
    finally:
        run.kill()
