"""An in-process engine for unit tests of the agent core: replays scripted completions, one per turn."""

from __future__ import annotations

import asyncio
from typing import Optional, Sequence, Union

from function_calling_agent.engine import EngineError, EngineOutput, EngineRequest


class ScriptedEngine:
    """Each call to `generate` plays the next scripted turn (the last one repeats) token by token.

    A turn is completion text (tokenized with special tokens recognized) or a list of ids. `chunk` ids go out per
    yield; `emit_end` appends the end id as TRT-LLM does by default. Options for faults: `fail_at_turn`,
    `hang_at_turn` (no tokens until `stop`), `token_delay_s`.
    """

    def __init__(self, tokenizer, turns: Sequence[Union[str, list]], *, emit_end: bool = True, chunk: int = 1,
                 token_delay_s: float = 0.0, fail_at_turn: Optional[int] = None,
                 hang_at_turn: Optional[int] = None, supports_bad_words: bool = True):
        self.tokenizer = tokenizer
        self.turns = list(turns)
        self.emit_end = emit_end
        self.chunk = chunk
        self.token_delay_s = token_delay_s
        self.fail_at_turn = fail_at_turn
        self.hang_at_turn = hang_at_turn
        self.supports_bad_words = supports_bad_words
        self.requests: list[EngineRequest] = []
        self.stopped: list[str] = []
        self.closed_early: list[str] = []
        self._stop_events: dict[str, asyncio.Event] = {}

    def ids_for(self, turn: int) -> list[int]:
        item = self.turns[min(turn, len(self.turns) - 1)]
        if isinstance(item, str):
            return self.tokenizer.encode(item, add_special_tokens=False)
        return list(item)

    async def generate(self, request: EngineRequest):
        turn = len(self.requests)
        self.requests.append(request)
        stop = self._stop_events.setdefault(request.request_id, asyncio.Event())
        ids = self.ids_for(turn)[: request.max_tokens]
        if self.emit_end and len(ids) < request.max_tokens:
            ids.append(request.end_id)
        if turn == self.fail_at_turn:
            raise EngineError("scripted engine failure")
        completed = False
        try:
            if turn == self.hang_at_turn:
                await stop.wait()
                return
            for i in range(0, len(ids), self.chunk):
                if stop.is_set():
                    return
                if self.token_delay_s:
                    await asyncio.sleep(self.token_delay_s)
                yield EngineOutput(tuple(ids[i: i + self.chunk]))
            completed = True
        finally:
            if not completed and not stop.is_set():
                self.closed_early.append(request.request_id)

    async def stop(self, request_id: str) -> None:
        self.stopped.append(request_id)
        self._stop_events.setdefault(request_id, asyncio.Event()).set()
