"""AgentRun end to end against the in-process ScriptedEngine: token-id state, budgets, validation, execution, limits,
deadlines, streaming, trace and cancellation."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from function_calling_agent.chat_format import FINAL_ANSWER_NOTE, ChatFormat
from function_calling_agent.engine import EngineError, EngineOutput
from function_calling_agent.run import AgentLimits, AgentRequest, AgentRun, ContextBudgetError, RunResult
from function_calling_agent.tools.execution import ToolExecutor
from function_calling_agent.tools.results import to_json_text
from function_calling_agent.tools.spec import ToolSpec
from tests.support.scripted_engine_client import ScriptedEngine

USER = ({"role": "user", "content": "What is the price of RIVN?"},)
SYMBOL = {"type": "object", "properties": {"symbol": {"type": "string", "description": "Ticker."}},
          "required": ["symbol"]}
NO_PARAMS = {"type": "object", "properties": {}}


def get_price(symbol: str) -> dict:
    return {"symbol": symbol, "price": 12.5}


def get_time() -> str:
    return "2024-01-02T03:04:05Z"


BASE_TOOLS = {
    "get_price": ToolSpec("get_price", "Current price of a stock.", SYMBOL, get_price),
    "get_time": ToolSpec("get_time", "Current time.", NO_PARAMS, get_time),
}


def call(name: str, **arguments) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


PRICE_CALL = call("get_price", symbol="RIVN")


@pytest.fixture
def release():
    """An event hung tools wait on; set at teardown so no test leaves a thread behind."""
    event = threading.Event()
    yield event
    event.set()


class Harness:
    def __init__(self, chat: ChatFormat):
        self.chat = chat
        self.tokenizer = chat.tokenizer

    def make(self, turns, *, tools=None, limits=AgentLimits(), messages=USER, max_tokens=200, stop_words=(),
             max_iterations=None, executor=None, serialize_result=None, **engine_options):
        engine = ScriptedEngine(self.tokenizer, turns, **engine_options)
        deltas: list[str] = []

        async def on_text(delta: str) -> None:
            deltas.append(delta)

        extra = {"serialize_result": serialize_result} if serialize_result else {}
        run = AgentRun(engine=engine, chat=self.chat, tools=BASE_TOOLS if tools is None else tools,
                       executor=executor or ToolExecutor(), limits=limits,
                       request=AgentRequest("r", tuple(messages), max_tokens, stop_words=tuple(stop_words),
                                            max_iterations=max_iterations),
                       on_text=on_text, **extra)
        return run, engine, deltas

    def play(self, turns, **options) -> tuple[RunResult, ScriptedEngine, list[str]]:
        run, engine, deltas = self.make(turns, **options)
        return asyncio.run(run.run()), engine, deltas

    def prompt_text(self, engine: ScriptedEngine, turn: int) -> str:
        return self.chat.decode(engine.requests[turn].prompt_ids)

    def first_prompt_len(self, tools=None, messages=USER) -> int:
        tools = BASE_TOOLS if tools is None else tools
        return len(self.chat.render_prompt(messages, [s.openai_schema() for s in tools.values()]))

    def count(self, ids, token: str) -> int:
        return list(ids).count(self.tokenizer.convert_tokens_to_ids(token))


@pytest.fixture(scope="module")
def harness(chat):
    return Harness(chat)


def spelled(tokenizer, text: str) -> list[int]:
    """A valid but non-canonical tokenization: one character at a time."""
    return [i for ch in text for i in tokenizer.encode(ch, add_special_tokens=False)]


# ---- conversation state as token ids ------------------------------------------------------------------------------

@pytest.mark.parametrize("emit_end", [True, False])
def test_each_prompt_is_the_previous_prompt_plus_generated_ids_plus_tool_turn(harness, emit_end):
    turns = ["Let me check.\n" + PRICE_CALL, call("get_time"), "RIVN is at 12.5."]
    result, engine, _ = harness.play(turns, emit_end=emit_end)
    assert result.finish_reason == "stop" and result.text == "Let me check.\n\nRIVN is at 12.5."
    assert len(engine.requests) == 3
    for turn in range(2):
        before, after = engine.requests[turn].prompt_ids, engine.requests[turn + 1].prompt_ids
        generated = engine.ids_for(turn)
        assert after[: len(before)] == before
        assert after[len(before): len(before) + len(generated)] == generated
        appended = harness.chat.decode(after[len(before) + len(generated):])
        assert appended.startswith("<|im_end|>\n<|im_start|>tool\n<tool_response>\n")
        assert appended.endswith("</tool_response><|im_end|>\n<|im_start|>assistant\n")
        assert harness.count(after[len(before):], "<|im_end|>") == 2  # exactly one close of the assistant turn


def test_prompts_are_the_same_whether_or_not_the_engine_sends_the_end_token(harness):
    turns = [PRICE_CALL, "Done."]
    _, with_end, _ = harness.play(turns, emit_end=True)
    _, without_end, _ = harness.play(turns, emit_end=False)
    assert [r.prompt_ids for r in with_end.requests] == [r.prompt_ids for r in without_end.requests]


def test_generated_ids_are_kept_verbatim_not_retokenized(harness, tokenizer):
    tag_open, tag_close = (tokenizer.convert_tokens_to_ids(t) for t in ("<tool_call>", "</tool_call>"))
    body = '\n{"name": "get_price", "arguments": {"symbol": "RIVN"}}\n'
    generated = spelled(tokenizer, "Checking now.\n") + [tag_open] + spelled(tokenizer, body) + [tag_close]
    canonical = tokenizer.encode("Checking now.\n<tool_call>" + body + "</tool_call>", add_special_tokens=False)
    assert generated != canonical
    result, engine, _ = harness.play([generated, "12.5"])
    assert result.calls[0].status == "ok" and result.text == "Checking now.\n\n12.5"
    first = engine.requests[0].prompt_ids
    assert engine.requests[1].prompt_ids[len(first): len(first) + len(generated)] == generated


def test_model_starting_a_new_turn_ends_its_turn(harness):
    result, engine, _ = harness.play(["Hello.<|im_start|>user\nforged question"], emit_end=False)
    assert result.text == "Hello." and result.finish_reason == "stop"
    assert result.messages[-1] == {"role": "assistant", "content": "Hello."}


def test_turn_ended_by_im_start_stops_the_engine(harness):
    _, engine, _ = harness.play(["Hello.<|im_start|>user\nforged question"], emit_end=False)
    assert engine.stopped == ["r-0"]


def test_special_tokens_other_than_tags_are_kept_in_ids_but_not_in_the_answer(harness, tokenizer):
    ids = tokenizer.encode("The<tools> price<|begin_of_text|> is 12.", add_special_tokens=False)
    result, engine, deltas = harness.play([ids])
    assert result.text == "".join(deltas) == "The price is 12."
    assert result.usage["completion_tokens"] == len(ids) + 1  # + the end id


def test_multibyte_characters_split_over_tokens_stream_intact(harness, tokenizer):
    text = "株価 is 📈 for Zürich 🚀"
    assert len(tokenizer.encode("📈🚀", add_special_tokens=False)) > 2  # each emoji spread over several tokens
    result, _, deltas = harness.play([text])
    assert result.text == "".join(deltas) == text


# ---- context budget -----------------------------------------------------------------------------------------------

def test_every_turn_fits_the_budget_and_large_results_are_capped(harness):
    tools = {**BASE_TOOLS, "dump": ToolSpec("dump", "Dump.", NO_PARAMS, lambda: "x" * 20000)}
    max_tokens = 60
    budget = harness.first_prompt_len(tools) + max_tokens + 200
    result, engine, _ = harness.play([call("dump"), "ok"], tools=tools, max_tokens=max_tokens,
                               limits=AgentLimits(max_context_tokens=budget))
    assert result.finish_reason == "stop" and result.calls[0].status == "ok"
    assert len(engine.requests) == 2
    for request in engine.requests:
        assert len(request.prompt_ids) + request.max_tokens <= budget
    assert "truncated" in harness.prompt_text(engine, 1)


@pytest.mark.parametrize("room", [0, 40, 150, 600, 3000])
def test_no_request_ever_exceeds_the_context_budget(harness, room):
    tools = {**BASE_TOOLS, "dump": ToolSpec("dump", "Dump.", NO_PARAMS, lambda: "word " * 800)}
    max_tokens = 50
    budget = harness.first_prompt_len(tools) + max_tokens + room
    result, engine, _ = harness.play([call("dump"), call("dump"), "ok"], tools=tools, max_tokens=max_tokens,
                                     limits=AgentLimits(max_context_tokens=budget))
    assert all(len(r.prompt_ids) + r.max_tokens <= budget for r in engine.requests)
    assert result.finish_reason in ("stop", "length")
    if result.finish_reason == "length":
        assert "context budget" in result.detail
    else:
        assert len(engine.requests) == 3


def test_tool_results_that_cannot_fit_end_with_length(harness, tokenizer):
    max_tokens = 60
    generated = len(tokenizer.encode(PRICE_CALL, add_special_tokens=False)) + 1
    budget = harness.first_prompt_len() + max_tokens + generated + 5
    result, engine, _ = harness.play([PRICE_CALL, "never"], max_tokens=max_tokens,
                               limits=AgentLimits(max_context_tokens=budget))
    assert result.finish_reason == "length"
    assert "tool results do not fit the context budget" in result.detail and str(budget) in result.detail
    assert len(engine.requests) == 1
    assert [c.name for c in result.calls] == ["get_price"]


def test_too_long_first_prompt_raises(harness):
    budget = harness.first_prompt_len() + 99
    run, engine, _ = harness.make(["never"], max_tokens=100, limits=AgentLimits(max_context_tokens=budget))
    with pytest.raises(ContextBudgetError, match="max_tokens is 100"):
        asyncio.run(run.run())
    assert engine.requests == []


def test_answer_reaching_max_tokens_ends_with_length(harness):
    result, engine, _ = harness.play(["one two three four five six seven eight nine ten"], max_tokens=4)
    assert result.finish_reason == "length" and "max_tokens (4)" in result.detail
    assert result.usage["completion_tokens"] == 4
    assert result.messages[-1]["role"] == "assistant" and result.messages[-1]["content"] == result.text


# ---- validation -------------------------------------------------------------------------------------------------

def test_unknown_tool_gets_an_error_listing_the_valid_names(harness):
    result, engine, _ = harness.play([call("get_weather", city="Paris"), "Sorry."])
    assert result.calls[0].status == "unknown_tool" and result.calls[0].name == "get_weather"
    assert "unknown tool 'get_weather'; the available tools are: get_price, get_time" in harness.prompt_text(engine, 1)
    assert result.usage["repair_turns"] == 1 and result.usage["iterations"] == 0


def test_malformed_json_goes_back_to_the_model(harness):
    result, engine, _ = harness.play(['<tool_call>\n{"name": "get_price", "arguments": {"symbol": RIVN}}\n</tool_call>',
                                "Sorry."])
    record = result.calls[0]
    assert (record.status, record.name) == ("malformed", "")
    prompt = harness.prompt_text(engine, 1)
    assert '{"name": "invalid_tool_call", "content": {"error": "invalid tool call: the tool call is not valid JSON' \
           in prompt
    assert result.finish_reason == "stop" and result.text == "Sorry."


@pytest.mark.parametrize("arguments, problem", [
    ({"symbol": 5}, "symbol: Input should be a valid string"),
    ({}, "symbol: Field required"),
    ({"symbol": "RIVN", "exchange": "NASDAQ"}, "exchange: Extra inputs are not permitted"),
])
def test_bad_arguments_get_an_error_naming_the_field(harness, arguments, problem):
    ran = []
    tools = {"get_price": ToolSpec("get_price", "Price.", SYMBOL, lambda symbol: ran.append(symbol))}
    result, engine, _ = harness.play([call("get_price", **arguments), "Sorry."], tools=tools)
    assert result.calls[0].status == "invalid_args" and ran == []
    assert f"invalid arguments for 'get_price': {problem}" in harness.prompt_text(engine, 1)
    assert result.calls[0].error.startswith("invalid arguments for 'get_price'")


@pytest.mark.parametrize("text", [
    call("get_time"),
    '<tool_call>\n{"name": "get_time"}\n</tool_call>',
    "<tool_call>\n{'name': 'get_time', 'arguments': {}}\n</tool_call>",
    '<tool_call>\n{"name": "get_time", "arguments": {}}',  # unterminated at the end of the turn
])
def test_calls_without_arguments_single_quotes_and_unterminated_calls_run(harness, text):
    result, engine, _ = harness.play([text, "It is three."])
    assert [(c.name, c.status) for c in result.calls] == [("get_time", "ok")]
    assert "2024-01-02T03:04:05Z" in harness.prompt_text(engine, 1)


def test_trailing_junk_after_a_call_never_reaches_the_answer(harness):
    result, _, deltas = harness.play([PRICE_CALL + "assistant\n\n", "Price is 12.5."], emit_end=False)
    assert result.text == "".join(deltas) == "Price is 12.5."
    assert result.messages[1]["content"] == ""


def test_repair_turns_are_bounded_and_counted_apart_from_iterations(harness, chat):
    bad = call("nope")
    result, engine, _ = harness.play([bad], limits=AgentLimits(max_repair_turns=2))
    assert len(engine.requests) == 4  # 3 invalid turns, then one last turn without tools
    assert result.finish_reason == "incomplete" and "invalid tool calls" in result.detail
    assert result.usage["repair_turns"] == 3 and result.usage["iterations"] == 0
    assert engine.requests[3].bad_words == chat.tool_call_words
    assert FINAL_ANSWER_NOTE in harness.prompt_text(engine, 3)
    assert FINAL_ANSWER_NOTE not in harness.prompt_text(engine, 2)


def test_repairs_and_iterations_each_have_their_own_limit(harness):
    turns = [PRICE_CALL, call("nope"), call("get_time"), "Done."]
    result, engine, _ = harness.play(turns, limits=AgentLimits(max_iterations=2, max_repair_turns=1))
    assert result.finish_reason == "stop" and result.text == "Done."
    assert (result.usage["iterations"], result.usage["repair_turns"]) == (2, 1)
    assert all(r.bad_words == () for r in engine.requests)


# ---- execution ----------------------------------------------------------------------------------------------------

def test_calls_of_one_turn_run_concurrently_and_results_keep_call_order(harness):
    # All three calls must be running at once to pass the barrier (one after another, it breaks after 5 s and the
    # calls fail), and the last call's result comes first: no wall-clock bound, so a busy machine cannot fail it.
    together = threading.Barrier(3, timeout=5)
    b_finished = threading.Event()

    def slow_a():
        together.wait()
        b_finished.wait(5)
        return "RESULT-A"

    def slow_b():
        together.wait()
        b_finished.set()
        return "RESULT-B"

    tools = {"slow_a": ToolSpec("slow_a", "A.", NO_PARAMS, slow_a),
             "slow_b": ToolSpec("slow_b", "B.", NO_PARAMS, slow_b)}
    result, engine, _ = harness.play([call("slow_a") + "\n" + call("slow_b") + "\n" + call("slow_a"), "Both done."],
                               tools=tools)
    assert [(c.name, c.status) for c in result.calls] == [("slow_a", "ok"), ("slow_b", "ok"), ("slow_a", "ok")]
    prompt = harness.prompt_text(engine, 1)
    a, b, a2 = prompt.index("RESULT-A"), prompt.index("RESULT-B"), prompt.rindex("RESULT-A")
    assert a < b < a2
    tool_turn = prompt[len(harness.prompt_text(engine, 0)):]
    assert tool_turn.count("<|im_start|>tool\n") == 1 and tool_turn.count("<tool_response>") == 3
    assert [m["role"] for m in result.messages] == ["user", "assistant", "tool", "tool", "tool", "assistant"]
    assert [m["tool_call_id"] for m in result.messages[2:5]] == [c["id"] for c in result.messages[1]["tool_calls"]]


def test_per_tool_timeout_is_the_tool_own_else_the_default(harness, release):
    executor = ToolExecutor()
    tools = {
        "own": ToolSpec("own", "Own timeout.", NO_PARAMS, lambda: release.wait(10), timeout_s=0.1),
        "default": ToolSpec("default", "Default timeout.", NO_PARAMS, lambda: release.wait(10)),
    }
    start = time.monotonic()
    result, engine, _ = harness.play([call("own") + call("default"), "Timed out."], tools=tools, executor=executor,
                               limits=AgentLimits(tool_timeout_s=0.25))
    assert time.monotonic() - start < 5  # not the tools' 10 s
    assert [(c.status, c.error) for c in result.calls] == [
        ("timeout", "the tool 'own' did not finish within 0.1 s"),
        ("timeout", "the tool 'default' did not finish within 0.25 s")]
    assert "did not finish within 0.25 s" in harness.prompt_text(engine, 1)
    assert executor.abandoned == 2
    release.set()
    deadline = time.monotonic() + 10
    while executor.abandoned and time.monotonic() < deadline:
        time.sleep(0.01)
    assert executor.abandoned == 0


def test_tool_exception_is_an_error_the_model_reads(harness):
    def get_price(symbol: str):
        raise LookupError(f"no quote for {symbol}")

    tools = {"get_price": ToolSpec("get_price", "Price.", SYMBOL, get_price)}
    result, engine, _ = harness.play([PRICE_CALL, "No quote."], tools=tools)
    assert (result.calls[0].status, result.calls[0].error) == ("error", "LookupError: no quote for RIVN")
    assert ('{"name": "get_price", "content": {"error": "LookupError: no quote for RIVN"}}'
            in harness.prompt_text(engine, 1))
    assert result.finish_reason == "stop" and result.usage["iterations"] == 1


def test_exhausted_tool_capacity_fails_fast_for_the_model(harness, release):
    executor = ToolExecutor(max_abandoned=1)
    tools = {**BASE_TOOLS, "hang": ToolSpec("hang", "Hangs.", NO_PARAMS, lambda: release.wait(10), timeout_s=0.05)}
    first, _, _ = harness.play([call("hang"), "x"], tools=tools, executor=executor)
    assert first.calls[0].status == "timeout" and executor.abandoned == 1
    start = time.monotonic()
    result, engine, _ = harness.play([call("hang"), "x"], tools=tools, executor=executor)
    assert time.monotonic() - start < 5  # not the hung tool's 10 s
    assert result.calls[0].status == "error" and "capacity" in result.calls[0].error
    assert "is at capacity" in harness.prompt_text(engine, 1)
    # The cap is per tool: a hung tool never starves the others.
    healthy, _, _ = harness.play([PRICE_CALL, "x"], tools=tools, executor=executor)
    assert healthy.calls[0].status == "ok"


def test_async_tools_run_in_the_loop(harness):
    async def quote(symbol: str):
        await asyncio.sleep(0.01)
        return {"symbol": symbol, "async": True}

    tools = {"get_price": ToolSpec("get_price", "Price.", SYMBOL, quote)}
    result, engine, _ = harness.play([PRICE_CALL, "ok"], tools=tools)
    assert result.calls[0].status == "ok"
    assert '{"symbol":"RIVN","async":true}' in harness.prompt_text(engine, 1).replace(" ", "")


def test_result_that_cannot_be_serialized_becomes_an_error(harness):
    tools = {"get_price": ToolSpec("get_price", "Price.", SYMBOL, lambda symbol: object())}
    result, engine, _ = harness.play([PRICE_CALL, "ok"], tools=tools, serialize_result=to_json_text)
    assert result.calls[0].status == "error" and "not JSON" in result.calls[0].error
    assert "the tool returned a value that is not JSON" in harness.prompt_text(engine, 1)


# ---- the request deadline -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("hang_at_turn", [0, 1])
def test_hanging_engine_turn_ends_incomplete_and_is_stopped(harness, hang_at_turn):
    start = time.monotonic()
    result, engine, _ = harness.play(["Checking.\n" + PRICE_CALL, "never"], hang_at_turn=hang_at_turn,
                               limits=AgentLimits(request_timeout_s=0.4))
    assert 0.35 < time.monotonic() - start < 5  # the 0.4 s deadline, not a turn that never ends
    assert result.finish_reason == "incomplete" and "deadline" in result.detail
    assert engine.stopped == [f"r-{hang_at_turn}"]
    assert result.text == ("Checking." if hang_at_turn else "")


def test_request_deadline_bounds_hung_tools_and_keeps_a_last_turn(harness, release, chat):
    tools = {**BASE_TOOLS, "hang": ToolSpec("hang", "Hangs.", NO_PARAMS, lambda: release.wait(10))}
    start = time.monotonic()
    result, engine, _ = harness.play([call("hang"), "I could not find out."], tools=tools,
                               limits=AgentLimits(request_timeout_s=0.8, tool_timeout_s=10))
    assert time.monotonic() - start < 5  # the 0.8 s deadline, not the 10 s tool timeout
    assert result.finish_reason == "stop" and result.text == "I could not find out."
    assert result.calls[0].status == "timeout"
    assert "deadline" in result.detail
    assert engine.requests[1].bad_words == chat.tool_call_words
    assert FINAL_ANSWER_NOTE in harness.prompt_text(engine, 1)


# ---- limits -------------------------------------------------------------------------------------------------------

def test_last_turn_at_max_iterations_forbids_tools_and_still_calling_is_incomplete(harness, chat):
    result, engine, _ = harness.play([PRICE_CALL], limits=AgentLimits(max_iterations=2))
    assert len(engine.requests) == 4
    assert [r.bad_words for r in engine.requests] == [(), (), (), chat.tool_call_words]
    assert chat.tool_call_words == ((harness.tokenizer.convert_tokens_to_ids("<tool_call>"),),)
    assert FINAL_ANSWER_NOTE in harness.prompt_text(engine, 3)
    assert FINAL_ANSWER_NOTE not in harness.prompt_text(engine, 2)
    assert [c.status for c in result.calls] == ["ok", "ok", "not_run", "not_run"]
    assert result.finish_reason == "incomplete" and "limit of 2 rounds" in result.detail
    assert result.usage["iterations"] == 2


def test_answer_on_the_last_turn_finishes_normally(harness):
    result, engine, _ = harness.play([PRICE_CALL, PRICE_CALL, "RIVN is at 12.5."], limits=AgentLimits(max_iterations=1))
    assert result.finish_reason == "stop" and result.text == "RIVN is at 12.5."
    assert "limit of 1 rounds" in result.detail
    assert [c.status for c in result.calls] == ["ok", "not_run"]


def test_no_bad_words_when_the_engine_cannot_take_them(harness):
    _, engine, _ = harness.play([PRICE_CALL, "ok"], supports_bad_words=False, limits=AgentLimits(max_iterations=0))
    assert [r.bad_words for r in engine.requests] == [(), ()]
    assert FINAL_ANSWER_NOTE in harness.prompt_text(engine, 1)


@pytest.mark.parametrize("server, requested, rounds", [(3, 1, 1), (2, 10, 2), (3, 0, 0), (2, None, 2)])
def test_request_max_iterations_can_lower_but_not_raise_the_limit(harness, server, requested, rounds):
    result, engine, _ = harness.play([PRICE_CALL], limits=AgentLimits(max_iterations=server), max_iterations=requested)
    assert result.usage["iterations"] == rounds
    assert len(engine.requests) == rounds + 2
    assert f"limit of {rounds} rounds" in result.detail


# ---- stop words and streaming -------------------------------------------------------------------------------------

def test_stop_word_ends_the_answer_and_stops_the_engine(harness):
    result, engine, deltas = harness.play(["The answer is 4.\nObservation: more text that must not appear"],
                                    stop_words=("Observation:",), token_delay_s=0.001)
    assert result.text == "".join(deltas) == "The answer is 4."
    assert result.finish_reason == "stop" and "Observation:" in result.detail
    assert engine.stopped == ["r-0"]
    assert len(engine.requests) == 1


def test_stop_word_answer_is_kept_in_messages(harness):
    result, _, _ = harness.play(["The answer is 4. STOP more"], stop_words=("STOP",))
    assert result.messages[-1] == {"role": "assistant", "content": "The answer is 4."}


def test_streamed_deltas_are_trimmed_and_turns_separated(harness):
    turns = ["  \n Let me look that up.  \n" + PRICE_CALL, "\n\n" + call("get_time"),
             "\n It is 12.5 \n at 03:04. \n\n"]
    result, _, deltas = harness.play(turns, emit_end=False)
    assert "".join(deltas) == result.text == "Let me look that up.\n\nIt is 12.5 \n at 03:04."
    assert deltas and all(d.strip() for d in deltas)
    assert not deltas[0][0].isspace() and not deltas[-1][-1].isspace()


# ---- trace --------------------------------------------------------------------------------------------------------

def test_trace_records_calls_and_usage(harness, tokenizer):
    turns = [PRICE_CALL + call("nope"), call("get_time", extra=1), "Done."]
    result, engine, _ = harness.play(turns)
    assert [(c.turn, c.name, c.arguments, c.status) for c in result.calls] == [
        (0, "get_price", {"symbol": "RIVN"}, "ok"),
        (0, "nope", {}, "unknown_tool"),
        (1, "get_time", {"extra": 1}, "invalid_args"),
    ]
    assert all(c.latency_ms >= 0 for c in result.calls) and result.calls[0].error is None
    generated = sum(len(engine.ids_for(t)) + 1 for t in range(3))
    assert result.usage == {
        **result.usage,
        "prompt_tokens": sum(len(r.prompt_ids) for r in engine.requests),
        "completion_tokens": generated,
        "engine_turns": 3, "tool_calls": 3, "iterations": 1, "repair_turns": 1,
    }
    trace = result.trace()
    assert trace["finish_reason"] == "stop" and trace["tool_calls"][0]["name"] == "get_price"
    json.dumps(trace)


def test_messages_are_openai_format_and_rerender(harness, chat):
    turns = ["Checking.\n" + PRICE_CALL + call("nope") + "<tool_call>{bad json</tool_call>",
             call("get_time", extra=1), PRICE_CALL, "RIVN is at 12.5."]
    result, _, _ = harness.play(turns, limits=AgentLimits(max_iterations=1))
    assert [m["role"] for m in result.messages] == [
        "user", "assistant", "tool", "tool", "assistant", "tool", "assistant", "tool", "system", "assistant"]
    first = result.messages[1]
    assert first["content"] == "Checking."
    assert [c["function"]["name"] for c in first["tool_calls"]] == ["get_price", "nope"]  # malformed call left out
    assert json.loads(first["tool_calls"][0]["function"]["arguments"]) == {"symbol": "RIVN"}
    assert json.loads(result.messages[2]["content"]) == {"name": "get_price", "content": {"symbol": "RIVN",
                                                                                          "price": 12.5}}
    assert result.messages[-1] == {"role": "assistant", "content": "RIVN is at 12.5."}
    answered = {m["tool_call_id"] for m in result.messages if m["role"] == "tool"}
    asked = {c["id"] for m in result.messages for c in m.get("tool_calls", ())}
    assert asked == answered
    follow_up = list(result.messages) + [{"role": "user", "content": "And TSLA?"}]
    text = chat.decode(chat.render_prompt(follow_up, [s.openai_schema() for s in BASE_TOOLS.values()]))
    assert text.endswith("RIVN is at 12.5.<|im_end|>\n<|im_start|>user\nAnd TSLA?<|im_end|>\n<|im_start|>assistant\n")


def test_every_tool_call_in_messages_is_answered_when_incomplete(harness):
    result, _, _ = harness.play([PRICE_CALL], limits=AgentLimits(max_iterations=0))
    assert result.finish_reason == "incomplete"
    answered = {m["tool_call_id"] for m in result.messages if m["role"] == "tool"}
    asked = {c["id"] for m in result.messages for c in m.get("tool_calls", ())}
    assert asked == answered


# ---- cancellation and engine failure ------------------------------------------------------------------------------

class GatedEngine:
    """Streams the turns token by token; in turn `gated_turn` it sends `free` tokens, then waits for `gate`."""

    supports_bad_words = True

    def __init__(self, tokenizer, turns, *, gated_turn: int, free: int):
        self.ids = [tokenizer.encode(t, add_special_tokens=False) for t in turns]
        self.gated_turn, self.free = gated_turn, free
        self.requests, self.stopped = [], []
        self.gate, self.waiting = asyncio.Event(), asyncio.Event()

    async def generate(self, request):
        turn = len(self.requests)
        self.requests.append(request)
        for i, token in enumerate(self.ids[turn] + [request.end_id]):
            if turn == self.gated_turn and i >= self.free and not self.gate.is_set():
                self.waiting.set()
                await self.gate.wait()
            yield EngineOutput((token,))

    async def stop(self, request_id: str) -> None:
        self.stopped.append(request_id)


def gated_run(harness, turns, gated_turn, free=3):
    engine = GatedEngine(harness.tokenizer, turns, gated_turn=gated_turn, free=free)
    run = AgentRun(engine=engine, chat=harness.chat, tools=BASE_TOOLS, executor=ToolExecutor(), limits=AgentLimits(),
                   request=AgentRequest("r", USER, 200))
    return run, engine


@pytest.mark.parametrize("cancel_turn", [0, 1])
def test_cancel_mid_generation_stops_the_running_turn_and_propagates(harness, cancel_turn):
    turns = [PRICE_CALL, "one two three four five"] if cancel_turn else ["one two three four five"]
    run, engine = gated_run(harness, turns, gated_turn=cancel_turn)

    async def cancel_midway():
        task = asyncio.ensure_future(run.run())
        await engine.waiting.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_midway())
    assert engine.stopped == [f"r-{cancel_turn}"]
    assert len(engine.requests) == cancel_turn + 1


def test_cancel_as_a_chunk_arrives_still_propagates(harness):
    run, engine = gated_run(harness, ["one two three four five"], gated_turn=0)

    async def cancel_as_chunk_arrives():
        task = asyncio.ensure_future(run.run())
        await engine.waiting.wait()
        engine.gate.set()  # the engine's next chunk is ready in the same loop step as the cancel
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_as_chunk_arrives())
    assert engine.stopped == ["r-0"]


def test_cancel_mid_tool_abandons_the_tool_thread(harness, release):
    executor = ToolExecutor()
    started = threading.Event()

    def hang():
        started.set()
        release.wait(10)

    tools = {"hang": ToolSpec("hang", "Hangs.", NO_PARAMS, hang)}
    run, engine, _ = harness.make([call("hang"), "never"], tools=tools, executor=executor)

    async def cancel_midway():
        task = asyncio.ensure_future(run.run())
        while not started.is_set():
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_midway())
    assert executor.abandoned == 1 and len(engine.requests) == 1
    release.set()
    deadline = time.monotonic() + 10
    while executor.abandoned and time.monotonic() < deadline:
        time.sleep(0.01)
    assert executor.abandoned == 0


def test_engine_failure_propagates(harness):
    run, engine, _ = harness.make([PRICE_CALL, "never"], fail_at_turn=1)
    with pytest.raises(EngineError):
        asyncio.run(run.run())
    assert len(engine.requests) == 2
