"""A tiny Llama overfitted on one agent conversation, so a real engine drives the agent through three turns.

A random model never emits a tool call, so an end-to-end run of the agent over the CPU engine would stop after one
turn. This model is trained (seconds of CPU) on the exact token ids the agent itself produces for USER_PROMPT with
the tools it is given (tools named get_current_stock_price and get_company_news), and greedy decoding then answers:

    turn 0  <tool_call> get_current_stock_price(RIVN) </tool_call><|im_end|>
    turn 1  <tool_call> get_company_news(RIVN) </tool_call><|im_end|>      (after the price result)
    turn 2  FINAL_ANSWER<|im_end|>                                         (after the news result)

The prompts come from running the agent's own loop (`function_calling_agent.run.AgentRun`) against an in-process
engine that replays these completions, with the same tools, so they are the prompts the served agent sends, token for
token.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Mapping

from ..chat_format import ChatFormat
from ..engine import EngineOutput
from ..run import AgentLimits, AgentRequest, AgentRun
from ..tools.execution import ToolExecutor
from ..tools.spec import ToolSpec

MARKER = ".tiny-tool-model-complete"

USER_PROMPT = "Give me Rivian (RIVN) news and stock price"
COMPLETIONS = (
    '<tool_call>\n{"name": "get_current_stock_price", "arguments": {"symbol": "RIVN"}}\n</tool_call>',
    '<tool_call>\n{"name": "get_company_news", "arguments": {"symbol": "RIVN"}}\n</tool_call>',
    "RIVN trades at 12.34 USD. News: RIVN ships more trucks.",
)
FINAL_ANSWER = COMPLETIONS[-1]
TOOL_CALLS = ("get_current_stock_price", "get_company_news")
# The served config's values that shape prompts (cpu profile / function_calling_agent config.pbtxt).
MAX_CONTEXT_TOKENS = 4096
MAX_TOOL_RESULT_CHARS = 4000

MAX_STEPS = 1500
# Each completion token must beat the runner-up logit by this much, so KV-cache and chunked-prefill rounding in the
# engine cannot flip a greedy choice.
MIN_MARGIN = 3.0


@dataclass(frozen=True)
class Transcript:
    prompts: tuple[tuple[int, ...], ...]  # what the agent sent the engine on each turn
    completions: tuple[tuple[int, ...], ...]  # what the engine must answer (ending with <|im_end|>)
    answer: str  # the agent's final answer for the replayed completions
    engine_turns: int


def completion_ids(tokenizer) -> tuple[tuple[int, ...], ...]:
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    return tuple(tuple(tokenizer.encode(text, add_special_tokens=False)) + (end_id,) for text in COMPLETIONS)


def agent_transcript(tokenizer, tools: Mapping[str, ToolSpec]) -> Transcript:
    """Runs the agent loop with an engine that replays `completion_ids` and records each prompt it is sent."""
    completions = completion_ids(tokenizer)
    prompts: list[tuple[int, ...]] = []

    class ReplayEngine:
        supports_bad_words = True

        async def generate(self, request):
            prompts.append(tuple(request.prompt_ids))
            yield EngineOutput(completions[min(len(prompts), len(completions)) - 1])

        async def stop(self, request_id):
            pass

    run = AgentRun(
        engine=ReplayEngine(), chat=ChatFormat(tokenizer), tools=tools,
        executor=ToolExecutor(), request=AgentRequest(request_id="tiny", messages=(
            {"role": "user", "content": USER_PROMPT},), max_tokens=64),
        limits=AgentLimits(max_context_tokens=MAX_CONTEXT_TOKENS, max_tool_result_chars=MAX_TOOL_RESULT_CHARS),
    )
    result = asyncio.run(run.run())
    if result.finish_reason != "stop" or [c.status for c in result.calls] != ["ok", "ok"]:
        raise AssertionError(f"the replayed conversation did not run as planned: {result.trace()}")
    return Transcript(tuple(prompts), completions, result.text, result.usage["engine_turns"])


def _training_sequence(transcript: Transcript):
    """One sequence holds all three turns (each prompt extends the previous turn); loss masks the completions."""
    full = list(transcript.prompts[-1]) + list(transcript.completions[-1])
    targets = []  # positions whose next token is a completion token
    for prompt, completion in zip(transcript.prompts, transcript.completions):
        if tuple(full[: len(prompt)]) != prompt or tuple(full[len(prompt): len(prompt) + len(completion)]) != completion:
            raise AssertionError("the agent's prompts do not extend each other token for token")
        targets.extend(range(len(prompt) - 1, len(prompt) + len(completion) - 1))
    return full, targets


def _margins(model, full, targets):
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([full])).logits[0, targets]
    labels = torch.tensor([full[t + 1] for t in targets])
    correct = logits.gather(1, labels[:, None])[:, 0]
    logits.scatter_(1, labels[:, None], float("-inf"))
    return correct - logits.max(dim=1).values


def greedy_completion(model, prompt, end_id: int, max_new_tokens: int = 64) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([list(prompt)]), max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=end_id, pad_token_id=end_id)
    return out[0, len(prompt):].tolist()


def build_tiny_tool_model(directory: str | os.PathLike, tokenizer_dir: str | os.PathLike,
                          tools: Mapping[str, ToolSpec]) -> str:
    """Train and save the model plus the tokenizer files into `directory` (kept if already built); return it.

    `tools` are the tools the served agent offers: their schemas are part of every prompt the model learns."""
    directory = os.fspath(directory)
    if os.path.isfile(os.path.join(directory, MARKER)):
        return directory

    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(os.fspath(tokenizer_dir))
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    transcript = agent_transcript(tokenizer, tools)
    full, targets = _training_sequence(transcript)

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id, eos_token_id=end_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same weights on every machine and run
    try:
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        inputs = torch.tensor([full[:-1]])
        positions = torch.tensor(targets)
        labels = torch.tensor([full[t + 1] for t in targets])
        model.train()
        for step in range(1, MAX_STEPS + 1):
            logits = model(inputs).logits[0, positions]
            loss = torch.nn.functional.cross_entropy(logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % 25 == 0:
                model.eval()
                if _margins(model, full, targets).min().item() >= MIN_MARGIN:
                    break
                model.train()
        model.eval()
        margin = _margins(model, full, targets).min().item()
        if margin < MIN_MARGIN:
            raise AssertionError(f"tiny tool model did not fit in {MAX_STEPS} steps (min margin {margin:.2f})")
        for prompt, completion in zip(transcript.prompts, transcript.completions):
            generated = greedy_completion(model, prompt, end_id)
            if tuple(generated) != completion:
                raise AssertionError(
                    f"greedy decoding gives {tokenizer.decode(generated)!r}, expected {tokenizer.decode(completion)!r}")
    finally:
        torch.set_num_threads(threads)

    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=end_id, pad_token_id=tokenizer.pad_token_id)
    os.makedirs(directory, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    with open(os.path.join(directory, MARKER), "w", encoding="utf-8") as f:
        f.write(f"steps={step} min_margin={margin:.2f} seconds={time.monotonic() - started:.1f}\n")
    return directory
