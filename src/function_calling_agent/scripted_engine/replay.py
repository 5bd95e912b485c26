"""An in-process engine that replays completions and records every prompt it is sent.

Running the agent's own loop (`AgentRun`) on it gives the exact prompts the served agent sends for a conversation,
token for token: what the tiny tool-calling model is trained on, and what benchmarks send an engine directly.
"""

from __future__ import annotations

import asyncio
from typing import Mapping, Sequence

from ..chat_format import ChatFormat
from ..engine import EngineOutput, EngineRequest
from ..limits import AgentLimits
from ..run import AgentRequest, AgentRun, RunResult
from ..tools.execution import ToolExecutor
from ..tools.spec import ToolSpec


class ReplayEngine:
    """Answers turn k with `completions[k]` (ids; the last repeats) in one response; records each request."""

    supports_bad_words = True

    def __init__(self, completions: Sequence[Sequence[int]]):
        self.completions = [tuple(c) for c in completions]
        self.requests: list[EngineRequest] = []

    async def generate(self, request: EngineRequest):
        self.requests.append(request)
        yield EngineOutput(self.completions[min(len(self.requests), len(self.completions)) - 1])

    async def stop(self, request_id: str) -> None:
        pass


def replay_prompts(chat: ChatFormat, tools: Mapping[str, ToolSpec], messages: Sequence[dict],
                   completions: Sequence[Sequence[int]], *, limits: AgentLimits = AgentLimits(),
                   max_tokens: int = 256) -> tuple[list[tuple[int, ...]], RunResult]:
    """The prompt ids of every engine turn of the agent's run over `completions`, and the run's result."""
    engine = ReplayEngine(completions)
    run = AgentRun(engine=engine, chat=chat, tools=tools, executor=ToolExecutor(), limits=limits,
                   request=AgentRequest(request_id="replay", messages=tuple(messages), max_tokens=max_tokens))
    result = asyncio.run(run.run())
    return [tuple(r.prompt_ids) for r in engine.requests], result
