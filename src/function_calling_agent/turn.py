"""One engine turn: stream the engine's ids, decode them incrementally, split answer text from `<tool_call>` blocks.

`run_engine_turn` returns an immutable `EngineTurn`, the record of what happened; answer text is pushed to the
request's `AnswerStream` (and on to the client) as soon as it is certain.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Awaitable, Callable

from .chat_format import ChatFormat
from .engine import EngineClient, EngineError, EngineRequest
from .tool_call_parser import AnswerStream, ToolCallParser
from .tools.execution import wait_with_timeout

# Why a turn ended: the end token (or the model starting a new turn), max_tokens, a client stop word, the deadline.
ENDED_END, ENDED_LENGTH, ENDED_STOP_WORD, ENDED_DEADLINE = "end", "length", "stop_word", "deadline"


@dataclasses.dataclass(frozen=True)
class EngineTurn:
    """What one engine turn did."""

    index: int
    prompt_tokens: int
    ids: tuple[int, ...]  # generated ids as generated (the end id included when the engine sent it)
    calls: tuple[str, ...]  # raw bodies of the turn's `<tool_call>` blocks
    answer_text: str  # the turn's answer text (text before its first call), stripped
    ended: str
    reused_prompt_tokens: int  # prompt tokens the engine did not prefill (0 when it does not report it)

    def trace(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "generated_tokens": len(self.ids), "ended": self.ended,
                "reused_prompt_tokens": self.reused_prompt_tokens}


async def run_engine_turn(
    engine: EngineClient,
    chat: ChatFormat,
    request: EngineRequest,
    index: int,
    answer: AnswerStream,
    emit: Callable[[str], Awaitable[None]],
    *,
    deadline: float,
    idle_timeout_s: float,
    clock: Callable[[], float],
) -> EngineTurn:
    """Runs one turn until the end token, max_tokens, a stop word or the deadline; stops the engine on an early exit.

    Raises `EngineError` when the engine fails or sends nothing for `idle_timeout_s`.
    """
    decode = chat.incremental_decoder()
    parser = ToolCallParser()
    ids: list[int] = []
    answer_parts: list[str] = []
    reused = 0
    ended = None
    finished = False
    stream = engine.generate(request)

    async def take(text: str) -> None:
        answer_parts.append(text)
        await emit(answer.push(text))

    try:
        while ended is None:
            remaining = deadline - clock()
            if remaining <= 0:
                ended = ENDED_DEADLINE
                break
            try:
                output = await wait_with_timeout(stream.__anext__(), min(remaining, idle_timeout_s))
            except StopAsyncIteration:
                finished = True
                break
            except asyncio.TimeoutError:
                if remaining <= idle_timeout_s:
                    ended = ENDED_DEADLINE
                    break
                raise EngineError(f"the engine sent nothing for {idle_timeout_s:g} s (engine_idle_timeout_seconds)")
            if output.reused_prompt_tokens is not None:
                reused = output.reused_prompt_tokens
            for token in output.token_ids:
                if token in chat.stop_ids:
                    # Only the engine's own end token ends the turn on the engine's side too; another turn marker
                    # (the model starting a new turn) is not kept.
                    if token == chat.end_id:
                        ids.append(token)
                    ended = ENDED_END
                    break
                ids.append(token)
                if token in chat.dropped_ids:
                    continue
                piece = decode(token)
                if piece:
                    text = parser.feed(piece)
                    if text:
                        await take(text)
                        if answer.stopped_by is not None:
                            ended = ENDED_STOP_WORD
                            break
    finally:
        if not finished and not (ids and ids[-1] == chat.end_id):
            # Left early (stop word, deadline, a turn marker or cancellation): make sure the engine stops too. After
            # its own end token the engine ends the turn by itself.
            await asyncio.shield(_stop(engine, request.request_id))
        await _close(stream)
    if ended is None:
        ended = ENDED_LENGTH if len(ids) >= request.max_tokens else ENDED_END
    rest = parser.finish()
    if rest and ended != ENDED_STOP_WORD:
        await take(rest)
    return EngineTurn(index=index, prompt_tokens=len(request.prompt_ids), ids=tuple(ids), calls=tuple(parser.calls),
                      answer_text="".join(answer_parts).strip(), ended=ended, reused_prompt_tokens=reused)


async def _stop(engine: EngineClient, request_id: str) -> None:
    try:
        await engine.stop(request_id)
    except Exception:  # stopping is best effort; the stream is closed regardless
        pass


async def _close(stream) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        try:
            await asyncio.shield(aclose())
        except Exception:
            pass
