"""One engine turn: stream the engine's ids, decode them incrementally, split reasoning, answer text and
`<tool_call>` blocks.

`run_engine_turn` returns an immutable `EngineTurn`, the record of what happened; answer and reasoning text are
pushed to the request's streams (and on to the client) as soon as they are certain.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Awaitable, Callable, Iterable, Optional, Sequence

from .chat_format import ChatFormat
from .engine import EngineClient, EngineError, EngineRequest
from .tool_call_parser import AnswerStream
from .tools.execution import wait_with_timeout
from .turn_parser import REASONING, TurnParser

# Why a turn ended: the end token (or the model starting a new turn), max_tokens, a client stop word, the deadline,
# its first closed tool call (parallel_tool_calls false).
ENDED_END, ENDED_LENGTH, ENDED_STOP_WORD, ENDED_DEADLINE = "end", "length", "stop_word", "deadline"
ENDED_FIRST_CALL = "first_call"


@dataclasses.dataclass(frozen=True)
class EngineTurn:
    """What one engine turn did."""

    index: int
    prompt_tokens: int
    ids: tuple[int, ...]  # the turn's ids as generated (the end id included when the engine sent it); a forced
    # prefix the agent wrote into the prompt (tool_choice) comes first
    calls: tuple[str, ...]  # raw bodies of the turn's `<tool_call>` blocks
    answer_text: str  # the turn's answer text (text before its first call), stripped
    ended: str
    reused_prompt_tokens: int  # prompt tokens the engine did not prefill (0 when it does not report it)
    reasoning_text: str = ""  # the turn's reasoning (its think block), stripped
    reasoning_tokens: int = 0  # generated ids spent inside the think block (its tags included)
    unterminated_call: bool = False  # the last call's block was still open when the turn ended

    def trace(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "generated_tokens": len(self.ids), "ended": self.ended,
                "reused_prompt_tokens": self.reused_prompt_tokens, "reasoning_tokens": self.reasoning_tokens}


async def run_engine_turn(
    engine: EngineClient,
    chat: ChatFormat,
    request: EngineRequest,
    index: int,
    answer: AnswerStream,
    emit: Callable[[str], Awaitable[None]],
    *,
    reasoning: AnswerStream,
    emit_reasoning: Callable[[str], Awaitable[None]],
    tool_names: Iterable[str],
    in_reasoning: bool,
    deadline: float,
    idle_timeout_s: float,
    clock: Callable[[], float],
    forced: Sequence[int] = (),
    stop_at_first_call: bool = False,
) -> EngineTurn:
    """Runs one turn until the end token, max_tokens, a stop word or the deadline; stops the engine on an early exit.

    `tool_names`: the offered tools (a call object naming one that opens the turn is a call). `in_reasoning`: the
    prompt ends inside an open think block. `forced`: ids the agent put at the end of the prompt as the start of the
    model's turn (`request.prompt_ids` ends with them); they are parsed as the turn's first ids.
    `stop_at_first_call`: end the turn (and stop the engine) once its first tool call is closed. Raises
    `EngineError` when the engine fails or sends nothing for `idle_timeout_s`.
    """
    decode = chat.incremental_decoder()
    parser = TurnParser(tool_names, think=chat.reasoning.has_think_tokens, in_reasoning=in_reasoning)
    ids: list[int] = []
    answer_parts: list[str] = []
    reasoning_parts: list[str] = []
    reasoning_tokens = 0
    reused = 0
    ended = None
    finished = False
    stream = engine.generate(request)

    async def take(parts) -> None:
        for kind, text in parts:
            if kind == REASONING:
                reasoning_parts.append(text)
                await emit_reasoning(reasoning.push(text))
            elif answer.stopped_by is None:
                answer_parts.append(text)
                await emit(answer.push(text))

    async def accept(token: int) -> Optional[str]:
        """Adds one id of the turn; returns why the turn ends with it, if it does."""
        nonlocal reasoning_tokens
        if token in chat.stop_ids:
            # Only the engine's own end token ends the turn on the engine's side too; another turn marker (the
            # model starting a new turn) is not kept.
            if token == chat.end_id:
                ids.append(token)
            return ENDED_END
        ids.append(token)
        if parser.in_reasoning:
            reasoning_tokens += 1
        if token in chat.dropped_ids:
            return None
        piece = decode(token)
        if piece:
            was_reasoning = parser.in_reasoning
            await take(parser.feed(piece))
            if parser.in_reasoning and not was_reasoning:
                reasoning_tokens += 1  # the token that opened the block
            if answer.stopped_by is not None:
                return ENDED_STOP_WORD
            if stop_at_first_call and parser.closed_calls:
                return ENDED_FIRST_CALL
        return None

    generated = 0
    try:
        for token in forced:
            await accept(token)
        while ended is None:
            remaining = deadline - clock()
            if remaining <= 0:
                ended = ENDED_DEADLINE
                break
            try:
                output = await _next_output(stream, min(remaining, idle_timeout_s))
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
                generated += 1
                ended = await accept(token)
                if ended is not None:
                    break
    finally:
        if not finished and not (ids and ids[-1] == chat.end_id):
            # Left early (stop word, deadline, a turn marker or cancellation): make sure the engine stops too. After
            # its own end token the engine ends the turn by itself.
            await asyncio.shield(_stop(engine, request.request_id))
        await _close(stream)
    if ended is None:
        ended = ENDED_LENGTH if generated >= request.max_tokens else ENDED_END
    await take(parser.finish())
    await emit_reasoning(reasoning.end_turn())
    return EngineTurn(index=index, prompt_tokens=len(request.prompt_ids), ids=tuple(ids), calls=tuple(parser.calls),
                      answer_text="".join(answer_parts).strip(), ended=ended, reused_prompt_tokens=reused,
                      reasoning_text="".join(reasoning_parts).strip(), reasoning_tokens=reasoning_tokens,
                      unterminated_call=parser.unterminated)


_timeout = getattr(asyncio, "timeout", None)  # Python 3.11+


async def _next_output(stream, timeout_s: float):
    """The stream's next output within `timeout_s` (asyncio.TimeoutError otherwise). Runs once per engine response:
    on Python 3.11+ a timer rescheduled in the caller's own task, with no task made per response."""
    if _timeout is None:
        return await wait_with_timeout(stream.__anext__(), timeout_s)
    async with _timeout(timeout_s):
        return await stream.__anext__()


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
