"""Agent work per engine turn, in-process: the agent's own loop (`AgentRun`) on an engine that answers at once and
tools that return at once, so every millisecond measured is the agent's (prompt rendering, tokenization, parsing,
validation, the tool round's thread hop), none the engine's or the tools'.

The conversation is the agent's usual one: the five finance tool schemas (their functions replaced by instant fixed
data), a user question, two tool rounds (a call per turn, then two calls in one turn) and an answer; each completion
streams one token per engine response, as TensorRT-LLM does. Prints a table (per-turn milliseconds, median of the
repetitions) and, with --profile, the functions that take the time (cProfile, cumulative).

    .venv/bin/python -m bench.turn_overhead [--repeat 200] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import io
import pstats
import statistics
import tempfile
import time

from function_calling_agent.chat_format import ChatFormat
from function_calling_agent.engine import EngineOutput, EngineRequest
from function_calling_agent.limits import AgentLimits
from function_calling_agent.offline_models.hermes_tokenizer import build_hermes_tokenizer
from function_calling_agent.run import AgentRequest, AgentRun
from function_calling_agent.tools import load_tool_modules
from function_calling_agent.tools.execution import ToolExecutor

USER = "Give me Rivian (RIVN) news and stock price, and compare it with NVDA."
TURNS = [
    '<tool_call>\n{"name": "get_current_stock_price", "arguments": {"symbol": "RIVN"}}\n</tool_call>',
    '<tool_call>\n{"name": "get_company_news", "arguments": {"symbol": "RIVN"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_current_stock_price", "arguments": {"symbol": "NVDA"}}\n</tool_call>',
    "RIVN trades at 12.34 USD after news that it ships more vehicles than expected; NVDA trades at 131.2 USD.",
]
FIXED = {
    "get_current_stock_price": {"symbol": "RIVN", "price": 12.34, "currency": "USD"},
    "get_company_news": [{"title": "RIVN ships more vehicles than expected", "publisher": "Bench Wire"},
                         {"title": "Analysts raise their RIVN target", "publisher": "Bench Daily"}],
}


class InstantEngine:
    """Streams turn k's completion one token per response, at once."""

    supports_bad_words = True

    def __init__(self, completions):
        self.completions = completions
        self.turn = 0

    async def generate(self, request: EngineRequest):
        ids = self.completions[min(self.turn, len(self.completions) - 1)]
        self.turn += 1
        for token in ids:
            yield EngineOutput((token,))

    async def stop(self, request_id: str) -> None:
        pass


def instant_tools():
    tools = load_tool_modules(["function_calling_agent.tools.finance"])
    return {name: dataclasses.replace(spec, fn=lambda _name=name, **_: FIXED.get(_name, {"ok": True}))
            for name, spec in tools.items()}


async def one_run(chat, tools, executor, completions) -> tuple[float, int]:
    engine = InstantEngine(completions)
    run = AgentRun(engine=engine, chat=chat, tools=tools, executor=executor, limits=AgentLimits(),
                   request=AgentRequest(request_id="bench", messages=({"role": "user", "content": USER},),
                                        max_tokens=256))
    started = time.perf_counter()
    result = await run.run()
    elapsed = time.perf_counter() - started
    assert result.finish_reason == "stop" and result.usage["engine_turns"] == len(TURNS), result
    return elapsed, result.usage["engine_turns"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--profile", action="store_true", help="print where the time goes (cProfile)")
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as folder:
        tokenizer = AutoTokenizer.from_pretrained(build_hermes_tokenizer(folder))
    chat = ChatFormat(tokenizer)
    tools = instant_tools()
    executor = ToolExecutor()
    completions = [tokenizer.encode(text, add_special_tokens=False) + [chat.end_id] for text in TURNS]
    tokens = sum(len(c) for c in completions)

    async def repeat(count):
        return [await one_run(chat, tools, executor, completions) for _ in range(count)]

    asyncio.run(repeat(10))  # warm-up: template compilation, tokenizer caches, thread pool
    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    runs = asyncio.run(repeat(args.repeat))
    if profiler:
        profiler.disable()
    per_turn = statistics.median(elapsed / turns for elapsed, turns in runs) * 1000
    per_run = statistics.median(elapsed for elapsed, _ in runs) * 1000
    print("| conversation | engine turns | generated tokens | agent ms per run | agent ms per turn |")
    print("|---|---|---|---|---|")
    print(f"| 5 finance tool schemas, 3 tool calls in 2 rounds, answer | {len(TURNS)} | {tokens} | "
          f"{per_run:.2f} | {per_turn:.2f} |")
    if profiler:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out).sort_stats("cumulative")
        stats.print_stats(30)
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
