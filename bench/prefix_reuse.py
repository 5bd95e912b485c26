"""Prefilled tokens per turn with and without token-exact prefix reuse, on the real CPU engine (tensorrt_llm_cpu).

Repository: `deploy/configure_repository.py --profile cpu` over the tiny random Llama (tests/support/tiny_llama.py)
and the offline Hermes-shaped tokenizer; the engine is loaded twice, as `tensorrt_llm` (prefix cache on, the
default), `tensorrt_llm_noreuse` (`prefix_cache_max_tokens` 0) and `tensorrt_llm_textloop` (reuse on, a second
empty cache for the text-level column).

Why the engine is driven directly: a random model never writes a `<tool_call>`, so the agent would stop after one
turn. Instead this module plays the agent's part over gRPC with the agent's own ChatFormat: turn k+1's prompt is
turn k's prompt + the ids the engine really generated in turn k + `<|im_end|>\\n` + the tool turn (real bench-tool
results), exactly how the agent extends its prompt. The conversation is the `chained` scenario (price, then news,
then the answer: 3 engine turns). The same prompts are replayed on the engine without reuse, so both columns
prefill identical sequences. A third column sends what a text-level client (the seed loop) would send: the
conversation rendered as text and re-tokenized every turn, on the reuse-enabled engine.
"""

from __future__ import annotations

import dataclasses
import queue
import re
import shutil
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import tritonclient.grpc as grpcclient

from bench.conversation import AgentPrompts, run_calls
from bench.scenarios import BY_NAME
from deploy.configure_repository import configure
from deploy.triton_launcher import TritonServer
from function_calling_agent.offline_models.tiny_llama import build_tiny_llama

REUSE = "tensorrt_llm"
NO_REUSE = "tensorrt_llm_noreuse"
TEXT_LOOP = "tensorrt_llm_textloop"  # reuse on, its own (empty) cache for the re-tokenized text conversation
SCENARIO = BY_NAME["chained"]
# Tool calls the scripted conversation makes after each turn but the last (the random model cannot make them).
CALLS = (
    [("get_current_stock_price", {"symbol": "NVDA"})],
    [("get_company_news", {"symbol": "NVDA"})],
)


@dataclasses.dataclass
class TurnMeasure:
    turn: int
    prompt_tokens: int
    reused_tokens: int
    first_token_ms: float  # request sent -> first generated token (prefill dominates)
    generated: list[int]

    @property
    def prefilled_tokens(self) -> int:
        return self.prompt_tokens - self.reused_tokens


@dataclasses.dataclass
class PrefixResult:
    with_reuse: list[TurnMeasure]
    without_reuse: list[TurnMeasure]
    text_retokenized: list[TurnMeasure]
    generated_per_turn: int
    engine_log: str = ""


def build_cpu_repository(root: Path, tokenizer_dir: Path) -> Path:
    model_dir = Path(build_tiny_llama(root / "tiny-llama", tokenizer_dir))
    repository = root / "cpu-repository"
    configure("cpu", repository, {"tokenizer_dir": str(model_dir), "model_dir": str(model_dir)}, overwrite=True)
    # Only the engine is measured here: drop the agent so the server starts faster.
    shutil.rmtree(repository / "function_calling_agent")
    source = repository / REUSE
    for name, cache_tokens in ((NO_REUSE, "0"), (TEXT_LOOP, None)):
        target = repository / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target)
        config = (target / "config.pbtxt").read_text(encoding="utf-8")
        config, named = re.subn(r'(?m)^name:\s*"tensorrt_llm"', f'name: "{name}"', config)
        if named != 1:
            raise RuntimeError(f"{target}/config.pbtxt: expected one `name:` line from configure_repository")
        if cache_tokens is not None:
            config, count = re.subn(
                r'(key:\s*"prefix_cache_max_tokens"\s*value:\s*\{\s*string_value:\s*)"\d+"', rf'\1"{cache_tokens}"',
                config)
            if count != 1:
                raise RuntimeError("tensorrt_llm_cpu config.pbtxt: no prefix_cache_max_tokens parameter to set")
        (target / "config.pbtxt").write_text(config, encoding="utf-8")
    return model_dir


def _input(name: str, array: np.ndarray, triton_type: str):
    t = grpcclient.InferInput(name, list(array.shape), triton_type)
    t.set_data_from_numpy(array)
    return t


def generate(client, model: str, prompt: Sequence[int], max_tokens: int, end_id: int) -> tuple[list[int], int, float]:
    """One streaming engine request: (generated ids, prefix_reused_tokens, ms to the first token)."""
    responses: queue.Queue = queue.Queue()
    inputs = [
        _input("input_ids", np.array([list(prompt)], dtype=np.int32), "INT32"),
        _input("input_lengths", np.array([[len(prompt)]], dtype=np.int32), "INT32"),
        _input("request_output_len", np.array([[max_tokens]], dtype=np.int32), "INT32"),
        _input("end_id", np.array([[end_id]], dtype=np.int32), "INT32"),
        _input("streaming", np.array([[True]], dtype=np.bool_), "BOOL"),
        _input("exclude_input_in_output", np.array([[True]], dtype=np.bool_), "BOOL"),
    ]
    client.start_stream(callback=lambda result, error: responses.put((time.perf_counter(), result, error)))
    sent = time.perf_counter()
    ids: list[int] = []
    reused = 0
    first: Optional[float] = None
    try:
        client.async_stream_infer(model, inputs, enable_empty_final_response=True)
        while True:
            arrived, result, error = responses.get(timeout=120)
            if error is not None:
                raise RuntimeError(f"{model}: {error}")
            response = result.get_response()
            names = {o.name for o in response.outputs}
            if "output_ids" in names:
                new = result.as_numpy("output_ids").reshape(-1).tolist()
                if new and first is None:
                    first = arrived
                ids += new
            if "prefix_reused_tokens" in names:
                reused = int(result.as_numpy("prefix_reused_tokens").reshape(-1)[0])
            if response.parameters["triton_final_response"].bool_param:
                break
    finally:
        client.stop_stream()
    return ids, reused, 1000 * ((first or time.perf_counter()) - sent)


def _agent_conversation(client, model, chat, tools, max_tokens) -> tuple[list[TurnMeasure], list[list[int]]]:
    prompts = AgentPrompts(chat, tools, SCENARIO.prompt)
    measures, sent = [], []
    for turn in range(len(CALLS) + 1):
        prompt = list(prompts.prompt)
        sent.append(prompt)
        ids, reused, ttft = generate(client, model, prompt, max_tokens, chat.end_id)
        measures.append(TurnMeasure(turn, len(prompt), reused, ttft, ids))
        if turn < len(CALLS):
            prompts.extend(ids, run_calls(tools, CALLS[turn]))
    return measures, sent


def _replay(client, model, chat, prompts: Sequence[Sequence[int]], max_tokens) -> list[TurnMeasure]:
    out = []
    for turn, prompt in enumerate(prompts):
        ids, reused, ttft = generate(client, model, prompt, max_tokens, chat.end_id)
        out.append(TurnMeasure(turn, len(prompt), reused, ttft, ids))
    return out


def _text_conversation(client, model, chat, tools, max_tokens) -> list[TurnMeasure]:
    """What a text-level client sends: messages rendered to text, re-tokenized by the server every turn."""
    tokenizer = chat.tokenizer
    schemas = [spec.openai_schema() for spec in tools.values()]
    messages = [{"role": "user", "content": SCENARIO.prompt}]
    out = []
    for turn in range(len(CALLS) + 1):
        text = tokenizer.apply_chat_template(messages, tools=schemas, chat_template=chat.template, tokenize=False,
                                             add_generation_prompt=True)
        prompt = tokenizer.encode(text, add_special_tokens=False)
        ids, reused, ttft = generate(client, model, prompt, max_tokens, chat.end_id)
        out.append(TurnMeasure(turn, len(prompt), reused, ttft, ids))
        if turn < len(CALLS):
            content = tokenizer.decode([i for i in ids if i != chat.end_id], skip_special_tokens=False)
            messages.append({"role": "assistant", "content": content})
            for name, payload in run_calls(tools, CALLS[turn]):
                messages.append({"role": "tool", "name": name, "content": payload})
    return out


def measure_prefix_reuse(root: Path, tokenizer_dir: Path, tools, log_dir: Path, max_tokens: int = 16,
                         ready_timeout: float = 240) -> PrefixResult:
    from transformers import AutoTokenizer

    from function_calling_agent.chat_format import ChatFormat

    root.mkdir(parents=True, exist_ok=True)
    model_dir = build_cpu_repository(root, tokenizer_dir)
    chat = ChatFormat(AutoTokenizer.from_pretrained(str(model_dir)))
    server = TritonServer(root / "cpu-repository", log_path=log_dir / "server_cpu_engine.log")
    try:
        server.launch(ready_timeout)
        client = grpcclient.InferenceServerClient(server.urls["grpc"])
        # Warm-up ids share no prefix with the conversation (no begin-of-text token), so no cache is seeded.
        warm = chat.tokenizer.encode("warm up", add_special_tokens=False)
        for model in (REUSE, NO_REUSE, TEXT_LOOP):
            generate(client, model, warm, 2, chat.end_id)
        with_reuse, prompts = _agent_conversation(client, REUSE, chat, tools, max_tokens)
        without_reuse = _replay(client, NO_REUSE, chat, prompts, max_tokens)
        text_retokenized = _text_conversation(client, TEXT_LOOP, chat, tools, max_tokens)
        client.close()
    finally:
        server.stop()
    return PrefixResult(with_reuse=with_reuse, without_reuse=without_reuse, text_retokenized=text_retokenized,
                        generated_per_turn=max_tokens)
