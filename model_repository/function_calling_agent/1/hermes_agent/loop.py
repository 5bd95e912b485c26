"""The agent loop: generate, parse tool calls, validate, execute, append results, until the model answers.

Each step ends in a defined outcome. The finish reasons a client sees:
  stop        the model answered (or a client stop word ended the answer)
  length      a turn hit `max_tokens`, or the context budget ran out
  incomplete  a limit (iterations, repair turns, deadline) was hit and the model still did not answer
  cancelled / error are produced by the adapter when the run is cancelled or the engine fails.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any, Awaitable, Callable, Mapping, Optional, Sequence

import pydantic
from tokenizers.decoders import DecodeStream

from .chat_format import FINAL_ANSWER_NOTE, ChatFormat
from .engine import EngineClient, EngineError, EngineRequest, EngineTurnStats, SamplingParams
from .tool_call_parser import AnswerStream, ToolCallFormatError, ToolCallParser, canonical_arguments, parse_tool_call
from .tool_execution import ToolExecutor, ToolOutcome, wait_with_timeout
from .tool_results import serialize_result
from .tools import ToolSpec, ToolStatus


class ContextBudgetError(ValueError):
    """The first prompt plus `max_tokens` does not fit the context; the client must shorten one of them."""


@dataclasses.dataclass(frozen=True)
class AgentLimits:
    max_iterations: int = 5
    max_repair_turns: int = 2
    tool_timeout_s: float = 10.0
    request_timeout_s: float = 120.0
    max_context_tokens: int = 8192
    max_tool_result_chars: int = 4000
    # Part of the request deadline kept for the last, tool-free answer turn.
    final_turn_reserve_s: float = 10.0
    # Longest wait for the engine's next response. Triton <= 25.03 never delivers an error that a decoupled BLS
    # stream sends after its first response, so a silent engine must be treated as failed.
    engine_idle_timeout_s: float = 60.0


@dataclasses.dataclass(frozen=True)
class AgentRequest:
    request_id: str
    messages: tuple[dict, ...]
    max_tokens: int
    sampling: SamplingParams = SamplingParams()
    stop_words: tuple[str, ...] = ()
    max_iterations: Optional[int] = None  # may only lower the server's limit


@dataclasses.dataclass
class CallRecord:
    turn: int
    name: str
    arguments: Any
    status: str
    latency_ms: float = 0.0
    error: Optional[str] = None


@dataclasses.dataclass
class RunResult:
    text: str
    finish_reason: str
    detail: str
    usage: dict
    calls: list[CallRecord]
    messages: list[dict]
    turns: list[dict] = dataclasses.field(default_factory=list)

    def trace(self) -> dict:
        return {
            "finish_reason": self.finish_reason,
            "detail": self.detail,
            "tool_calls": [dataclasses.asdict(c) for c in self.calls],
            "turns": self.turns,
            "messages": self.messages,
        }


@dataclasses.dataclass
class _Turn:
    ids: list[int]
    calls: list[str]
    ended: str  # end | length | stop_word | deadline
    answer_text: str
    reused_prompt_tokens: int


@dataclasses.dataclass
class _PreparedCall:
    raw: str
    name: str
    arguments: Any
    spec: Optional[ToolSpec] = None
    kwargs: Optional[dict] = None
    status: ToolStatus = ToolStatus.OK
    error: Optional[str] = None
    call_id: str = ""


SerializeResult = Callable[[Any, int], str]


class AgentRun:
    """One client request, from the first prompt to the final answer."""

    def __init__(
        self,
        *,
        engine: EngineClient,
        chat: ChatFormat,
        tools: Mapping[str, ToolSpec],
        executor: ToolExecutor,
        limits: AgentLimits,
        request: AgentRequest,
        on_text: Optional[Callable[[str], Awaitable[None]]] = None,
        serialize_result: SerializeResult = serialize_result,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.engine = engine
        self.chat = chat
        self.tools = dict(tools)
        self.executor = executor
        self.limits = limits
        self.request = request
        self._on_text = on_text
        self._serialize = serialize_result
        self._clock = clock
        self.max_iterations = limits.max_iterations
        if request.max_iterations is not None:
            self.max_iterations = max(0, min(limits.max_iterations, request.max_iterations))
        self.calls: list[CallRecord] = []
        self.turns: list[dict] = []  # per engine turn: prompt, generated and reused tokens
        self.messages: list[dict] = [dict(m) for m in request.messages]
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "engine_turns": 0, "tool_calls": 0,
                      "iterations": 0, "repair_turns": 0, "reused_prompt_tokens": 0, "context_tokens": 0}
        self._answer = AnswerStream(request.stop_words)
        self._repairs_in_row = 0

    # ------------------------------------------------------------------------------------------------------------
    async def run(self) -> RunResult:
        start = self._clock()
        deadline = start + self.limits.request_timeout_s
        reserve = min(self.limits.final_turn_reserve_s, self.limits.request_timeout_s / 4)
        soft_deadline = deadline - reserve
        schemas = [spec.openai_schema() for spec in self.tools.values()]
        prompt = self.chat.render_prompt(self.request.messages, schemas)
        budget = self.limits.max_context_tokens
        if len(prompt) + self.request.max_tokens > budget:
            raise ContextBudgetError(
                f"the prompt is {len(prompt)} tokens and max_tokens is {self.request.max_tokens}; together they "
                f"exceed the context budget of {budget} tokens: shorten the input or lower max_tokens")

        final_turn, final_reason = False, ""
        turn_index = 0
        while True:
            bad_words = self.chat.tool_call_words if final_turn and self.engine.supports_bad_words else ()
            answered_before = len(self._answer.text)
            turn = await self._generate(prompt, turn_index, bad_words, deadline)
            self.usage["context_tokens"] = len(prompt) + len(turn.ids)

            if self._answer.stopped_by is not None:
                self.messages.append({"role": "assistant", "content": self._answer.text[answered_before:].strip()})
                return self._finish("stop", f"stop word {self._answer.stopped_by!r}")
            if turn.ended == "deadline":
                await self._emit(self._answer.end_turn())
                self.messages.append({"role": "assistant", "content": self._answer.text[answered_before:].strip()})
                return self._finish("incomplete", "the request deadline was reached while generating")
            if not turn.calls:
                await self._emit(self._answer.end_turn())
                self.messages.append({"role": "assistant", "content": self._answer.text[answered_before:].strip()})
                if turn.ended == "length":
                    return self._finish("length", f"the answer reached max_tokens ({self.request.max_tokens})")
                return self._finish("stop", final_reason)

            await self._emit(self._answer.end_turn())
            prompt = prompt + turn.ids + self.chat.close_assistant_turn(turn.ids)
            prepared = [self._prepare(raw) for raw in turn.calls]
            self._record_assistant_turn(turn.answer_text, prepared, turn_index)
            if final_turn:
                not_run = ToolOutcome(ToolStatus.NOT_RUN, error=f"not run: {final_reason}")
                results = [(call, not_run) for call in prepared]
                self._answer_in_messages(results, self._contents(results, self.limits.max_tool_result_chars), None)
                for call, outcome in results:
                    self._record(turn_index, call, outcome)
                return self._finish("incomplete", f"{final_reason}; the model still called tools on its last turn")

            outcomes, final_reason = await self._run_round(prepared, soft_deadline)
            results = list(zip(prepared, outcomes))
            note = FINAL_ANSWER_NOTE if final_reason else None
            tool_ids, contents = self._fit_tool_turn(prompt, results, note)
            self._answer_in_messages(results, contents, note)
            for call, outcome in results:  # after serialization, which may turn an ok result into an error
                self._record(turn_index, call, outcome)
            if tool_ids is None:
                return self._finish("length", f"the tool results do not fit the context budget of {budget} tokens")
            prompt = prompt + tool_ids
            final_turn = bool(final_reason)
            turn_index += 1

    # ------------------------------------------------------------------------------------------------------------
    async def _generate(self, prompt: list[int], turn_index: int, bad_words, deadline: float) -> _Turn:
        request = EngineRequest(
            request_id=f"{self.request.request_id}-{turn_index}",
            prompt_ids=prompt,
            max_tokens=self.request.max_tokens,
            sampling=self.request.sampling,
            end_id=self.chat.end_id,
            pad_id=self.chat.pad_id,
            bad_words=tuple(bad_words),
        )
        stats = EngineTurnStats()
        decoder = DecodeStream(skip_special_tokens=False)
        backend = self.chat.tokenizer._tokenizer
        parser = ToolCallParser()
        ids: list[int] = []
        answer_parts: list[str] = []
        ended = None
        stream = self.engine.generate(request, stats)
        finished = False
        self.usage["engine_turns"] += 1
        self.usage["prompt_tokens"] += len(prompt)
        try:
            while ended is None:
                remaining = deadline - self._clock()
                if remaining <= 0:
                    ended = "deadline"
                    break
                idle = self.limits.engine_idle_timeout_s
                try:
                    chunk = await wait_with_timeout(stream.__anext__(), min(remaining, idle))
                except StopAsyncIteration:
                    finished = True
                    break
                except asyncio.TimeoutError:
                    if remaining <= idle:
                        ended = "deadline"
                        break
                    raise EngineError(f"the engine sent nothing for {idle:g} s (engine_idle_timeout_seconds)")
                for token in chunk:
                    if token in self.chat.stop_ids:
                        # Only the engine's own end token ends the turn on the engine's side too.
                        if token == self.chat.end_id:
                            ids.append(token)
                            ended = "end"
                        else:
                            ended = "turn_marker"
                        break
                    ids.append(token)
                    if token in self.chat.dropped_ids:
                        continue
                    piece = decoder.step(backend, token)
                    if piece:
                        text = parser.feed(piece)
                        if text:
                            answer_parts.append(text)
                            await self._emit(self._answer.push(text))
                            if self._answer.stopped_by is not None:
                                ended = "stop_word"
                                break
        finally:
            self.usage["completion_tokens"] += len(ids)
            if not finished:
                # Left early (end token, stop word, deadline or cancellation): make sure the engine stops too.
                await asyncio.shield(self._stop_engine(request.request_id, ended == "end"))
            await _close(stream)
        if ended is None:
            ended = "length" if len(ids) >= self.request.max_tokens else "end"
        elif ended == "turn_marker":
            ended = "end"
        rest = parser.finish()
        if rest and ended != "stop_word":
            answer_parts.append(rest)
            await self._emit(self._answer.push(rest))
        self.usage["reused_prompt_tokens"] += stats.reused_prompt_tokens
        self.turns.append({"prompt_tokens": len(prompt), "generated_tokens": len(ids), "ended": ended,
                           "reused_prompt_tokens": stats.reused_prompt_tokens})
        return _Turn(ids=ids, calls=parser.calls, ended=ended, answer_text="".join(answer_parts).strip(),
                     reused_prompt_tokens=stats.reused_prompt_tokens)

    async def _stop_engine(self, request_id: str, natural_end: bool) -> None:
        if natural_end:
            return  # the engine ends the turn by itself after the end token
        try:
            await self.engine.stop(request_id)
        except Exception:  # stopping is best effort; the stream is closed regardless
            pass

    # ------------------------------------------------------------------------------------------------------------
    def _prepare(self, raw: str) -> _PreparedCall:
        try:
            call = parse_tool_call(raw)
        except ToolCallFormatError as exc:
            return _PreparedCall(raw=raw, name="", arguments=raw.strip()[:500], status=ToolStatus.MALFORMED,
                                 error=f"invalid tool call: {exc}")
        spec = self.tools.get(call.name)
        if spec is None:
            names = ", ".join(sorted(self.tools)) or "(none)"
            return _PreparedCall(raw=raw, name=call.name, arguments=call.arguments, status=ToolStatus.UNKNOWN_TOOL,
                                 error=f"unknown tool {call.name!r}; the available tools are: {names}")
        try:
            kwargs = spec.validate_arguments(call.arguments)
        except pydantic.ValidationError as exc:
            return _PreparedCall(raw=raw, name=call.name, arguments=call.arguments, spec=spec,
                                 status=ToolStatus.INVALID_ARGS, error=_describe_validation(call.name, exc))
        return _PreparedCall(raw=raw, name=call.name, arguments=call.arguments, spec=spec, kwargs=kwargs)

    async def _run_round(self, prepared: Sequence[_PreparedCall], soft_deadline: float):
        """Runs the valid calls of one turn concurrently; returns outcomes in call order and why tools end, if they do."""
        runnable = [c for c in prepared if c.status is ToolStatus.OK]
        outcomes: dict[int, ToolOutcome] = {
            i: ToolOutcome(c.status, error=c.error) for i, c in enumerate(prepared) if c.status is not ToolStatus.OK}
        final_reason = ""
        if not runnable:
            self.usage["repair_turns"] += 1
            self._repairs_in_row += 1
            if self._repairs_in_row > self.limits.max_repair_turns:
                final_reason = f"the model made invalid tool calls {self._repairs_in_row} turns in a row"
        elif self.usage["iterations"] >= self.max_iterations:
            final_reason = f"the tool-call limit of {self.max_iterations} rounds was reached"
        elif self._clock() >= soft_deadline:
            final_reason = "the request deadline left no time for more tool calls"
        else:
            self.usage["iterations"] += 1
            self._repairs_in_row = 0
            jobs = []
            for i, call in enumerate(prepared):
                if call.status is ToolStatus.OK:
                    timeout = call.spec.timeout_s or self.limits.tool_timeout_s
                    timeout = min(timeout, soft_deadline - self._clock())
                    jobs.append((i, self.executor.run(call.spec, call.kwargs, timeout)))
            results = await asyncio.gather(*(job for _, job in jobs))
            outcomes.update({i: r for (i, _), r in zip(jobs, results)})
            if self._clock() >= soft_deadline:
                final_reason = "the request deadline left no time for more tool calls"
        for i, call in enumerate(prepared):
            if i not in outcomes:
                outcomes[i] = ToolOutcome(ToolStatus.NOT_RUN, error=f"not run: {final_reason}")
        return [outcomes[i] for i in range(len(prepared))], final_reason

    def _fit_tool_turn(self, prompt, results, note):
        """The tool turn's ids, with results shortened until prompt + turn + max_tokens fits (None if never)."""
        room = self.limits.max_context_tokens - len(prompt) - self.request.max_tokens
        max_chars = self.limits.max_tool_result_chars
        while True:
            contents = self._contents(results, max_chars)
            ids = self.chat.tool_turn(contents, note=note)
            if len(ids) <= room:
                return ids, contents
            if max_chars <= 64:
                return None, contents
            max_chars //= 2

    def _contents(self, results, max_chars: int) -> list[tuple[str, str]]:
        return [(c.name or "invalid_tool_call", self._content(c, o, max_chars)) for c, o in results]

    def _answer_in_messages(self, results, contents, note) -> None:
        """Tool messages answering the assistant's calls, so `messages` stays a valid history to continue."""
        for (call, _), (_, content) in zip(results, contents):
            if call.status is not ToolStatus.MALFORMED:  # its call is not in the history either
                self.messages.append({"role": "tool", "tool_call_id": call.call_id, "name": call.name,
                                      "content": content})
        if note:
            self.messages.append({"role": "system", "content": note})

    def _content(self, call: _PreparedCall, outcome: ToolOutcome, max_chars: int) -> str:
        name = call.name or "invalid_tool_call"
        if outcome.status is ToolStatus.OK:
            try:
                body = self._serialize(outcome.value, max_chars)
            except Exception as exc:
                outcome.status, outcome.error = ToolStatus.ERROR, f"the tool returned a value that is not JSON: {exc}"
            else:
                return self.chat.tool_response_content(name, body)
        error = (outcome.error or outcome.status.value)[:max_chars]
        return self.chat.tool_response_content(name, json.dumps({"error": error}, ensure_ascii=False))

    # ------------------------------------------------------------------------------------------------------------
    def _record_assistant_turn(self, text: str, prepared: Sequence[_PreparedCall], turn: int) -> None:
        tool_calls = []
        for i, call in enumerate(prepared):
            call.call_id = f"call_{turn}_{i}"
            if call.status is not ToolStatus.MALFORMED:
                tool_calls.append({"id": call.call_id, "type": "function",
                                   "function": {"name": call.name, "arguments": canonical_arguments(call.arguments)}})
        message: dict = {"role": "assistant", "content": text}
        if tool_calls:
            message["tool_calls"] = tool_calls
        self.messages.append(message)

    def _record(self, turn: int, call: _PreparedCall, outcome: ToolOutcome) -> None:
        self.usage["tool_calls"] += 1
        self.calls.append(CallRecord(turn=turn, name=call.name, arguments=call.arguments, status=outcome.status.value,
                                     latency_ms=round(outcome.latency_s * 1000, 3), error=outcome.error))

    async def _emit(self, delta: str) -> None:
        if delta and self._on_text is not None:
            await self._on_text(delta)

    def _finish(self, reason: str, detail: str) -> RunResult:
        return RunResult(text=self._answer.text, finish_reason=reason, detail=detail, usage=dict(self.usage),
                         calls=self.calls, messages=self.messages, turns=self.turns)


def _describe_validation(name: str, exc: pydantic.ValidationError) -> str:
    problems = []
    for err in exc.errors()[:8]:
        field = ".".join(str(p) for p in err.get("loc", ())) or "(arguments)"
        problems.append(f"{field}: {err.get('msg')}")
    return f"invalid arguments for {name!r}: " + "; ".join(problems)


async def _close(stream) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        try:
            await asyncio.shield(aclose())
        except Exception:
            pass

