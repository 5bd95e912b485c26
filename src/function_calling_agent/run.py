"""The agent run: generate, parse tool calls, validate, execute, append results, until the model answers.

Each step ends in a defined outcome. The finish reasons a client sees:
  stop        the model answered (or a client stop word ended the answer)
  length      a turn hit `max_tokens`, or the context budget ran out
  incomplete  a limit (iterations, repair turns, deadline) was hit and the model still did not answer
  tool_calls  the model called client tools: the turn's server calls ran, the client calls are the result
  cancelled / error are produced by the adapter when the run is cancelled or the engine fails.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import secrets
import time
from typing import Any, Awaitable, Callable, Mapping, Optional, Sequence

import pydantic

from .chat_format import FINAL_ANSWER_NOTE, ChatFormat, Prompt
from .continuation import PendingTurn, PendingTurns
from .engine import EngineClient, EngineRequest, SamplingParams
from .limits import AgentLimits
from .tool_call_parser import AnswerStream, ToolCall, ToolCallFormatError, parse_tool_calls
from .tool_choice import ToolChoice
from .tools.client import ClientToolSpec, offer_tools, openai_call
from .tools.execution import ToolExecutor, ToolOutcome
from .tools.results import cap_json, to_json_text
from .tools.spec import ToolSpec, ToolStatus
from .transcript import EMPTY_ANSWER, CallRecord, RoundKind, RunResult, Transcript, error_payload
from .turn import ENDED_DEADLINE, ENDED_LENGTH, EngineTurn, run_engine_turn

__all__ = ["AgentLimits", "AgentRequest", "AgentRun", "ContextBudgetError", "RunResult"]


class ContextBudgetError(ValueError):
    """The first prompt plus `max_tokens` does not fit the context; the client must shorten one of them."""


@dataclasses.dataclass(frozen=True)
class AgentRequest:
    request_id: str
    messages: tuple[dict, ...]
    max_tokens: int
    sampling: SamplingParams = SamplingParams()
    stop_words: tuple[str, ...] = ()
    max_iterations: Optional[int] = None  # may only lower the server's limit
    enable_thinking: Optional[bool] = None  # the template's thinking switch (Qwen3 hybrid); None: the model's default
    client_tools: tuple[ClientToolSpec, ...] = ()  # offered next to the server's tools; the client runs them
    tool_choice: ToolChoice = ToolChoice()
    parallel_tool_calls: bool = True  # False: a turn ends at its first call


@dataclasses.dataclass(frozen=True)
class PreparedCall:
    """A call read from a `<tool_call>` block and checked against the offered tools, ready to run (status OK) or not."""

    call_id: str
    name: str
    arguments: Any
    status: ToolStatus = ToolStatus.OK
    error: Optional[str] = None
    spec: Optional[ToolSpec] = None
    kwargs: Optional[dict] = None

    @property
    def readable(self) -> bool:
        """Its JSON could be read, so it appears in the history as a tool call (a malformed one cannot)."""
        return self.status is not ToolStatus.MALFORMED


@dataclasses.dataclass(frozen=True)
class CallResult:
    """A settled call: its final status, and the full JSON of its value (OK) or the error for the model."""

    call: PreparedCall
    status: ToolStatus
    value_json: Optional[str] = None
    error: Optional[str] = None
    latency_s: float = 0.0

    @property
    def name(self) -> str:
        return self.call.name or "invalid_tool_call"

    def payload(self, max_chars: int) -> str:
        if self.status is ToolStatus.OK:
            return cap_json(self.value_json, max_chars)
        return error_payload((self.error or self.status.value)[:max_chars])

    def record(self, turn: int) -> CallRecord:
        return CallRecord(turn=turn, name=self.call.name, arguments=self.call.arguments, status=self.status.value,
                          latency_ms=round(self.latency_s * 1000, 3), error=self.error,
                          server=self.call.spec.server if self.call.spec is not None else None)


SerializeResult = Callable[[Any], str]


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
        on_reasoning: Optional[Callable[[str], Awaitable[None]]] = None,
        serialize_result: SerializeResult = to_json_text,
        clock: Callable[[], float] = time.monotonic,
        pending_turns: Optional[PendingTurns] = None,
    ):
        """Raises `ToolOfferError` (a client tool named like a server tool) or `ToolChoiceError` (a tool_choice that
        names no offered tool): the client must change the request."""
        self.engine = engine
        self.chat = chat
        self.tools = offer_tools(tools, request.client_tools)
        request.tool_choice.check_offered(self.tools)
        self.executor = executor
        self.limits = limits
        self.request = request
        self._on_text = on_text
        self._on_reasoning = on_reasoning
        self._serialize = serialize_result
        self._clock = clock
        self.max_iterations = limits.max_iterations
        if request.max_iterations is not None:
            self.max_iterations = max(0, min(limits.max_iterations, request.max_iterations))
        self._pending = pending_turns
        self.resumed = pending_turns.resume(request.messages) if pending_turns is not None else None
        self.transcript = Transcript(self.resumed.messages if self.resumed else request.messages)
        self._answer = AnswerStream(request.stop_words)
        self._reasoning = AnswerStream()
        self._schemas = [spec.openai_schema() for spec in self.tools.values()]
        # Call ids are unique across runs: a client answers its calls by id, possibly in a later request.
        self._call_ids = f"call_{secrets.token_hex(6)}_"

    @property
    def calls(self) -> list[CallRecord]:
        return self.transcript.calls

    async def run(self) -> RunResult:
        start = self._clock()
        deadline = start + self.limits.request_timeout_s
        reserve = min(self.limits.final_turn_reserve_s, self.limits.request_timeout_s / 4)
        soft_deadline = deadline - reserve
        if self.resumed is not None:
            # A continuation of a turn that ended in client calls: its ids as they were, as far as the history matches.
            prompt = self.chat.continue_prompt(self.resumed.turn.prompt, self.resumed.turn.generated,
                                               self.transcript.prompt_messages, self._schemas,
                                               enable_thinking=self.request.enable_thinking)
        else:
            prompt = self.chat.render_prompt(self.request.messages, self._schemas,
                                             enable_thinking=self.request.enable_thinking)
        budget = self.limits.max_context_tokens
        if len(prompt) + self.request.max_tokens > budget:
            raise ContextBudgetError(
                f"the prompt is {len(prompt)} tokens and max_tokens is {self.request.max_tokens}; together they "
                f"exceed the context budget of {budget} tokens: shorten the input or lower max_tokens")

        final_reason = ""  # set once a limit ends tool use: the next turn is the last, with tool calls banned
        index = 0
        while True:
            answered_before = len(self._answer.text)
            turn = await self._engine_turn(prompt, index, last=bool(final_reason), deadline=deadline)
            self.transcript.add_turn(turn)

            if self._answer.stopped_by is not None:
                self.transcript.add_answer(self._answer.text[answered_before:], turn.reasoning_text)
                return self._finish("stop", f"stop word {self._answer.stopped_by!r}")
            await self._emit(self._answer.end_turn())
            prepared = self._prepare_turn(turn, index)
            if not self.request.parallel_tool_calls:
                prepared = prepared[:1]  # a block may hold several call objects: the turn ends at the first
            if turn.ended == ENDED_LENGTH and turn.unterminated_call and prepared[-1].status is ToolStatus.MALFORMED:
                self.transcript.add_answer(self._answer.text[answered_before:], turn.reasoning_text)
                name = _called_name(turn.calls[-1])
                return self._finish("length", f"the tool call{f' to {name!r}' if name else ''} was cut off by "
                                              f"max_tokens ({self.request.max_tokens}): raise max_tokens")
            if turn.ended == ENDED_DEADLINE or not prepared:
                answer = self._answer.text[answered_before:]
                self.transcript.add_answer(answer, turn.reasoning_text)
                if turn.ended == ENDED_DEADLINE:
                    return self._finish("incomplete", "the request deadline was reached while generating")
                if turn.ended == ENDED_LENGTH:
                    return self._finish("length", f"the answer reached max_tokens ({self.request.max_tokens})")
                if not answer.strip() and self.transcript.rounds:
                    return self._finish("stop", f"{EMPTY_ANSWER}: the model ended its turn without an answer after "
                                                "the tool results" + (f" ({final_reason})" if final_reason else ""))
                return self._finish("stop", final_reason)

            raw_text = None if all(c.readable for c in prepared) else self.chat.decode(
                [i for i in turn.ids if i not in self.chat.stop_ids])
            self.transcript.add_tool_calls(turn.answer_text, turn.reasoning_text,
                                           [(c.call_id, c.name, c.arguments) for c in prepared if c.readable], raw_text)
            if final_reason or self.request.tool_choice.bans_calls:
                reason = final_reason or "tool_choice is 'none'"
                results = [CallResult(c, ToolStatus.NOT_RUN, error=f"not run: {reason}") for c in prepared]
                self._record_results(index, RoundKind.REFUSED, results, self.limits.max_tool_result_chars, None)
                return self._finish("incomplete", f"{reason}; the model still called tools on its last turn")
            client_calls = [c for c in prepared if c.status is ToolStatus.OK and isinstance(c.spec, ClientToolSpec)]
            if client_calls:
                return await self._hand_to_client(prompt, turn, index, prepared, client_calls, soft_deadline)

            kind, results, final_reason = await self._tool_round(prepared, soft_deadline)
            note = self._note() if final_reason else None
            next_prompt, max_chars = self._fit_tool_turn(prompt, turn, results, note)
            self._record_results(index, kind, results, max_chars, note)
            if next_prompt is None:
                return self._finish("length", f"the tool results do not fit the context budget of {budget} tokens")
            prompt = next_prompt
            index += 1

    # ------------------------------------------------------------------------------------------------------------
    async def _engine_turn(self, prompt: Prompt, index: int, *, last: bool, deadline: float) -> EngineTurn:
        choice = self.request.tool_choice
        banned = last or choice.bans_calls
        bad_words = self.chat.tool_call_words if banned and self.engine.supports_bad_words else ()
        in_reasoning = self.chat.reasoning.starts_in_reasoning(self.request.enable_thinking)
        # tool_choice required / a named function: the request's first turn is a call, its tag written by the agent
        # and its object generated under the guide (tool_choice.py).
        constrained = index == 0 and choice.constrains and not banned
        forced = self.chat.call_prefix(in_reasoning) if constrained else ()
        request = EngineRequest(
            request_id=f"{self.request.request_id}-{index}", prompt_ids=[*prompt.ids, *forced],
            max_tokens=self.request.max_tokens, sampling=self.request.sampling, end_id=self.chat.end_id,
            pad_id=self.chat.pad_id, bad_words=tuple(bad_words), stop_words=self.chat.stop_words,
            guided=choice.guide(self.tools) if constrained else None)
        return await run_engine_turn(
            self.engine, self.chat, request, index, self._answer, self._emit, reasoning=self._reasoning,
            emit_reasoning=self._emit_reasoning, tool_names=() if choice.bans_calls else self.tools.keys(),
            in_reasoning=in_reasoning, deadline=deadline, idle_timeout_s=self.limits.engine_idle_timeout_s,
            clock=self._clock, forced=forced, stop_at_first_call=not self.request.parallel_tool_calls)

    async def _hand_to_client(self, prompt: Prompt, turn: EngineTurn, index: int, prepared: Sequence[PreparedCall],
                              client_calls: Sequence[PreparedCall], soft_deadline: float) -> RunResult:
        """The turn called client tools: its other calls run (or get their errors) as in any round, then the run
        ends with the client calls; the turn is kept for the client's continuation."""
        others = [c for c in prepared if c not in client_calls]
        assistant = self.transcript.messages[-1]  # the turn's message, added by the caller
        results: list[CallResult] = []
        if others:
            kind, results, _ = await self._tool_round(others, soft_deadline)
            self._record_results(index, kind, results, self.limits.max_tool_result_chars, None)
        handed = [CallResult(c, ToolStatus.CLIENT) for c in client_calls]
        self.transcript.add_round(index, RoundKind.CLIENT, [r.record(index) for r in handed])
        pending = tuple(openai_call(c.call_id, c.name, c.arguments) for c in client_calls)
        if self._pending is not None:
            answered = {r.call.call_id for r in results if r.call.readable}
            self._pending.save(PendingTurn(
                assistant=assistant, client_ids=frozenset(c.call_id for c in client_calls),
                server_results=tuple(m for m in self.transcript.messages
                                     if m.get("role") == "tool" and m.get("tool_call_id") in answered),
                prompt=prompt, generated=turn.ids))
        names = ", ".join(c.name for c in client_calls)
        return dataclasses.replace(self._finish("tool_calls", f"the model called client tools ({names})"),
                                   tool_calls=pending)

    def _prepare_turn(self, turn: EngineTurn, index: int) -> list[PreparedCall]:
        """Every call of the turn (a block may hold several), with call ids in order."""
        calls = []
        for raw in turn.calls:
            for parsed in parse_tool_calls(raw):
                calls.append(self._prepare(parsed, raw, f"{self._call_ids}{index}_{len(calls)}"))
        return calls

    def _prepare(self, call: "ToolCall | ToolCallFormatError", raw: str, call_id: str) -> PreparedCall:
        if isinstance(call, ToolCallFormatError):
            return PreparedCall(call_id, name="", arguments=raw.strip()[:500], status=ToolStatus.MALFORMED,
                                error=f"invalid tool call: {call}")
        spec = self.tools.get(call.name)
        if spec is None:
            names = ", ".join(sorted(self.tools)) or "(none)"
            return PreparedCall(call_id, call.name, call.arguments, ToolStatus.UNKNOWN_TOOL,
                                error=f"unknown tool {call.name!r}; the available tools are: {names}")
        try:
            kwargs = spec.validate_arguments(call.arguments)
        except pydantic.ValidationError as exc:
            return PreparedCall(call_id, call.name, call.arguments, ToolStatus.INVALID_ARGS,
                                error=_describe_validation(call.name, exc), spec=spec)
        return PreparedCall(call_id, call.name, call.arguments, spec=spec, kwargs=kwargs)

    async def _tool_round(self, prepared: Sequence[PreparedCall], soft_deadline: float):
        """Runs the valid calls of one turn concurrently.

        Returns the round's kind, one settled result per call (in call order), and why tool use ends ("" if it goes on).
        """
        runnable = [c for c in prepared if c.status is ToolStatus.OK]
        final_reason = ""
        outcomes: dict[str, ToolOutcome] = {}
        if not runnable:
            kind = RoundKind.REPAIR
            repairs = self.transcript.repairs_in_a_row + 1
            if repairs > self.limits.max_repair_turns:
                final_reason = f"the model made invalid tool calls {repairs} turns in a row"
        elif self.transcript.iterations >= self.max_iterations:
            kind, final_reason = RoundKind.REFUSED, f"the tool-call limit of {self.max_iterations} rounds was reached"
        elif self._clock() >= soft_deadline:
            kind, final_reason = RoundKind.REFUSED, "the request deadline left no time for more tool calls"
        else:
            kind = RoundKind.TOOLS
            jobs = {}
            for call in runnable:
                timeout = min(call.spec.timeout_s or self.limits.tool_timeout_s, soft_deadline - self._clock())
                jobs[call.call_id] = self.executor.run(call.spec, call.kwargs, timeout)
            outcomes = dict(zip(jobs, await asyncio.gather(*jobs.values())))
            if self._clock() >= soft_deadline:
                final_reason = "the request deadline left no time for more tool calls"
        return kind, [self._settle(call, outcomes.get(call.call_id), final_reason) for call in prepared], final_reason

    def _settle(self, call: PreparedCall, outcome: Optional[ToolOutcome], final_reason: str) -> CallResult:
        if call.status is not ToolStatus.OK:
            return CallResult(call, call.status, error=call.error)
        if outcome is None:
            return CallResult(call, ToolStatus.NOT_RUN, error=f"not run: {final_reason}")
        if outcome.status is not ToolStatus.OK:
            return CallResult(call, outcome.status, error=outcome.error, latency_s=outcome.latency_s)
        try:
            value_json = self._serialize(outcome.value)
        except Exception as exc:  # the tool returned something with no JSON form (ToolResultError, or a bug in it)
            return CallResult(call, ToolStatus.ERROR, error=f"the tool returned a value that is not JSON: {exc}",
                              latency_s=outcome.latency_s)
        return CallResult(call, ToolStatus.OK, value_json=value_json, latency_s=outcome.latency_s)

    def _fit_tool_turn(self, prompt: Prompt, turn: EngineTurn, results: Sequence[CallResult],
                       note: Optional[dict]):
        """The next prompt and the result cap used: results are shortened until prompt + max_tokens fits.

        The prompt is None when even the shortest results do not fit.
        """
        room = self.limits.max_context_tokens - self.request.max_tokens
        max_chars = self.limits.max_tool_result_chars
        while True:
            messages = self.transcript.prompt_messages + self.transcript.tool_messages(
                self._answers(results, max_chars), note)
            candidate = self.chat.continue_prompt(prompt, turn.ids, messages, self._schemas,
                                                  enable_thinking=self.request.enable_thinking)
            if len(candidate) <= room:
                return candidate, max_chars
            if max_chars <= 64:
                return None, max_chars
            max_chars //= 2

    def _answers(self, results: Sequence[CallResult], max_chars: int) -> list[tuple[str, str, str, bool]]:
        return [(r.call.call_id, r.name, self.chat.tool_response_content(r.name, r.payload(max_chars)),
                 r.call.readable) for r in results]

    def _note(self) -> dict:
        return {"role": self.chat.note_role, "content": FINAL_ANSWER_NOTE}

    def _record_results(self, turn: int, kind: RoundKind, results: Sequence[CallResult], max_chars: int,
                        note: Optional[dict]) -> None:
        self.transcript.add_tool_results(self._answers(results, max_chars), note)
        self.transcript.add_round(turn, kind, [r.record(turn) for r in results])

    async def _emit(self, delta: str) -> None:
        if delta and self._on_text is not None:
            await self._on_text(delta)

    async def _emit_reasoning(self, delta: str) -> None:
        if delta and self._on_reasoning is not None:
            await self._on_reasoning(delta)

    def _finish(self, reason: str, detail: str) -> RunResult:
        t = self.transcript
        return RunResult(text=self._answer.text, finish_reason=reason, detail=detail, usage=t.usage(),
                         calls=tuple(t.calls), messages=tuple(t.messages), turns=tuple(t.turns),
                         reasoning=self._reasoning.text)


def _called_name(raw: str) -> Optional[str]:
    match = _NAME_IN_CALL.search(raw)
    return match.group(1) if match else None


_NAME_IN_CALL = re.compile(r'"name"\s*:\s*"([^"\\]{1,64})"')


def _describe_validation(name: str, exc: pydantic.ValidationError) -> str:
    problems = []
    for err in exc.errors()[:8]:
        field = ".".join(str(p) for p in err.get("loc", ())) or "(arguments)"
        problems.append(f"{field}: {err.get('msg')}")
    return f"invalid arguments for {name!r}: " + "; ".join(problems)
