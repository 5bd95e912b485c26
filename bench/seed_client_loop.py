"""The seed tutorial's function-calling loop, client-side, as the benchmark baseline.

Like the tutorial's `client.py` against `ensemble`, every turn the client renders the whole prompt as text, opens a
stream, sends it to a text-in/text-out model (bench/models/seed_text_model), closes the stream and waits for it to end,
parses `<tool_call>` blocks from the text, runs the tools itself one after another, appends the results as text and
sends the next turn. Deliberate differences from the seed, so that both paths replay the same conversation:
the prompt is the agent's Hermes format (its chat template, imported client-side), every tool call of a turn is run
(the seed parsed only the first), and tool results are JSON (the seed interpolated Python reprs).

    python -m bench.seed_client_loop -u localhost:8001 --tokenizer-dir DIR --tools-dir DIR -p "Give me Rivian news"
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import queue
import re
import sys
import time
from pathlib import Path
from typing import Optional

import tritonclient.grpc as grpcclient

from bench.timed_calls import text_request

TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


@dataclasses.dataclass
class SeedTurn:
    t_send: float
    t_first: Optional[float]  # arrival of the first text chunk
    t_end: float  # the stream ended (stop_stream returned)
    text: str
    calls: list[tuple[str, dict]]
    tool_s: float  # time spent running this turn's tools, one after another


@dataclasses.dataclass
class SeedRun:
    t_start: float
    t_end: float
    answer: str
    turns: list[SeedTurn]

    @property
    def t_first_answer(self) -> Optional[float]:
        """First chunk of the final turn as it arrived: the best case for the seed, whose client prints a turn only
        after it has ended and holds no tool call."""
        return self.turns[-1].t_first if self.turns else None

    @property
    def tool_calls(self) -> int:
        return sum(len(t.calls) for t in self.turns)

    @property
    def tool_s(self) -> float:
        return sum(t.tool_s for t in self.turns)


class SeedClientLoop:
    def __init__(self, url: str, tokenizer_dir: str | Path, tools, model: str = "seed_text_model",
                 max_tokens: int = 512, max_turns: int = 6):
        """`tools` maps tool names to hermes_agent ToolSpecs (the agent's registry type: same schemas, same code)."""
        from transformers import AutoTokenizer

        from function_calling_agent.chat_format import ChatFormat

        self.client = grpcclient.InferenceServerClient(url)
        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        self.template = ChatFormat(self.tokenizer).template
        self.tools = dict(tools)
        self.schemas = [spec.openai_schema() for spec in self.tools.values()]
        self.model = model
        self.max_tokens = max_tokens
        self.max_turns = max_turns

    def render(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, tools=self.schemas, chat_template=self.template,
                                                  tokenize=False, add_generation_prompt=True)

    def _turn(self, prompt: str) -> tuple[float, Optional[float], float, str]:
        """The tutorial's run_inference: start_stream, send, stop_stream (waits for the end), then read the queue."""
        responses: queue.Queue = queue.Queue()
        t_send = time.time()
        self.client.start_stream(callback=lambda result, error: responses.put((time.time(), result, error)))
        self.client.async_stream_infer(self.model, text_request(prompt, self.max_tokens, stream=True))
        self.client.stop_stream()
        t_end = time.time()
        text, t_first = "", None
        while not responses.empty():
            arrived, result, error = responses.get()
            if error is not None:
                raise RuntimeError(f"{self.model}: {error}")
            piece = result.as_numpy("text_output")
            if piece is not None and piece.size:
                value = piece.reshape(-1)[0].decode("utf-8")
                if value and t_first is None:
                    t_first = arrived
                text += value
        return t_send, t_first, t_end, text

    def _run_tool(self, name: str, arguments: dict) -> str:
        from bench.conversation import tool_message_content

        spec = self.tools.get(name)
        if spec is None:
            return tool_message_content(name, {"error": f"unknown tool {name!r}"})
        try:
            return tool_message_content(name, spec.fn(**arguments))
        except Exception as exc:
            return tool_message_content(name, {"error": f"{type(exc).__name__}: {exc}"})

    def run(self, user_prompt: str) -> SeedRun:
        t_start = time.time()
        messages: list[dict] = [{"role": "user", "content": user_prompt}]
        turns: list[SeedTurn] = []
        for _ in range(self.max_turns):
            t_send, t_first, t_end, text = self._turn(self.render(messages))
            calls = []
            for raw in TOOL_CALL.findall(text):
                call = json.loads(raw)
                calls.append((call["name"], call.get("arguments") or {}))
            turn = SeedTurn(t_send=t_send, t_first=t_first, t_end=t_end, text=text, calls=calls, tool_s=0.0)
            turns.append(turn)
            if not calls:
                return SeedRun(t_start=t_start, t_end=t_end, answer=text.strip(), turns=turns)
            messages.append({"role": "assistant", "content": text})
            started = time.perf_counter()
            for name, arguments in calls:  # one after another, as the seed's client does
                messages.append({"role": "tool", "name": name, "content": self._run_tool(name, arguments)})
            turn.tool_s = time.perf_counter() - started
        raise RuntimeError(f"no answer after {self.max_turns} turns")

    def close(self) -> None:
        self.client.close()


def load_tools(tools_dir: str | Path, module: str = "bench_tools"):
    """Import the tool module from a folder (the agents' tool_path), as the agent does."""
    from function_calling_agent.tools import load_tool_modules

    return load_tool_modules([module], [str(Path(tools_dir).resolve())])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-u", "--url", default="localhost:8001")
    parser.add_argument("-p", "--prompt", required=True)
    parser.add_argument("--tokenizer-dir", required=True)
    parser.add_argument("--tools-dir", required=True, help="folder holding the tool module (the agents' tool_path)")
    parser.add_argument("--model-name", default="seed_text_model")
    parser.add_argument("-o", "--output-len", type=int, default=512)
    args = parser.parse_args(argv)
    loop = SeedClientLoop(args.url, args.tokenizer_dir, load_tools(args.tools_dir), model=args.model_name,
                          max_tokens=args.output_len)
    run = loop.run(args.prompt)
    for i, turn in enumerate(run.turns):
        print(f"turn {i}: {len(turn.calls)} call(s), {1000 * (turn.t_end - turn.t_send):.1f} ms", file=sys.stderr)
    print(run.answer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
