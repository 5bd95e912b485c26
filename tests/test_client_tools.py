"""Client tools, tool_choice and parallel_tool_calls in the agent core (AgentRun over the in-process ScriptedEngine),
and their decoding in the client contract."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from function_calling_agent.adapter.contract import InvalidRequest, decode_request
from function_calling_agent.continuation import PendingTurns
from function_calling_agent.run import AgentLimits, AgentRequest, AgentRun
from function_calling_agent.tool_choice import ToolChoice, ToolChoiceError, standard_schema
from function_calling_agent.tools.client import ToolOfferError, client_tool_specs
from function_calling_agent.tools.execution import ToolExecutor
from function_calling_agent.tools.spec import ToolSpec
from tests.support.scripted_engine_client import ScriptedEngine

USER = ({"role": "user", "content": "Price of RIVN, and show it on my screen."},)
SYMBOL = {"type": "object", "properties": {"symbol": {"type": "string", "description": "Ticker."}},
          "required": ["symbol"]}
SERVER_TOOLS = {"get_price": ToolSpec("get_price", "Current price of a stock.", SYMBOL,
                                      lambda symbol: {"symbol": symbol, "price":12.5})}
CLIENT_TOOLS = [{"type": "function", "function": {
    "name": "show_on_screen", "description": "Shows text on the user's screen.",
    "parameters": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"],
                   "additionalProperties": False}}}]


def call(name: str, **arguments) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def call_object(name: str, **arguments) -> str:
    return json.dumps({"name": name, "arguments": arguments})


class Runner:
    def __init__(self, chat):
        self.chat = chat
        self.pending = PendingTurns()

    def run(self, turns, *, messages=USER, client_tools=CLIENT_TOOLS, tool_choice=ToolChoice(), parallel=True,
            pending=None, **engine_options):
        engine = ScriptedEngine(self.chat.tokenizer, turns, **engine_options)
        deltas: list[str] = []

        async def on_text(delta):
            deltas.append(delta)

        run = AgentRun(engine=engine, chat=self.chat, tools=SERVER_TOOLS, executor=ToolExecutor(),
                       limits=AgentLimits(), on_text=on_text,
                       request=AgentRequest("r", tuple(messages), 200, client_tools=client_tool_specs(client_tools),
                                            tool_choice=tool_choice, parallel_tool_calls=parallel),
                       pending_turns=self.pending if pending is None else pending)
        return asyncio.run(run.run()), engine, deltas, run


@pytest.fixture
def runner(chat):
    return Runner(chat)


def test_a_client_tool_call_ends_the_run_with_the_call_in_openai_form(runner):
    result, engine, deltas, _ = runner.run(["One moment.\n" + call("show_on_screen", text="hi")])
    assert result.finish_reason == "tool_calls" and len(engine.requests) == 1
    assert "".join(deltas) == "One moment." and result.text == "One moment."
    (pending,) = result.tool_calls
    assert pending["type"] == "function" and pending["id"].startswith("call_")
    assert pending["function"] == {"name": "show_on_screen", "arguments": '{"text": "hi"}'}
    assert [(c.name, c.status) for c in result.calls] == [("show_on_screen", "client")]
    assistant = result.messages[-1]
    assert assistant["role"] == "assistant" and assistant["tool_calls"] == [pending]
    # the client tool is offered to the model next to the server's, in the template's tools list
    prompt = runner.chat.decode(engine.requests[0].prompt_ids)
    assert "show_on_screen" in prompt and "get_price" in prompt


def test_a_mixed_turn_runs_the_server_call_and_hands_over_the_client_call(runner):
    turn = call("get_price", symbol="RIVN") + "\n" + call("show_on_screen", text="RIVN")
    result, engine, _, _ = runner.run([turn])
    assert result.finish_reason == "tool_calls" and len(engine.requests) == 1
    assert [(c.name, c.status) for c in result.calls] == [("get_price", "ok"), ("show_on_screen", "client")]
    assert [c["function"]["name"] for c in result.tool_calls] == ["show_on_screen"]
    assistant, server_result = result.messages[-2:]
    assert [c["function"]["name"] for c in assistant["tool_calls"]] == ["get_price", "show_on_screen"]
    assert server_result["role"] == "tool" and server_result["tool_call_id"] == assistant["tool_calls"][0]["id"]
    assert '"price":12.5' in server_result["content"]
    assert result.usage["iterations"] == 1


def openai_continuation(result, client_answer: str) -> tuple[dict, ...]:
    """What an OpenAI client sends next: its messages, the assistant message it got (client calls only), and its
    tool results."""
    sent = {"role": "assistant", "content": result.text or None, "tool_calls": list(result.tool_calls)}
    answers = [{"role": "tool", "tool_call_id": c["id"], "content": client_answer} for c in result.tool_calls]
    return USER + (sent, *answers)


def test_the_continuation_restores_the_server_calls_and_is_token_exact(runner):
    turn = call("get_price", symbol="RIVN") + "\n" + call("show_on_screen", text="RIVN")
    first, engine1, _, _ = runner.run([turn])
    messages = openai_continuation(first, '{"shown": true}')
    second, engine2, deltas, run = runner.run(["Shown: RIVN at 12.5."], messages=messages)
    assert second.finish_reason == "stop" and "".join(deltas) == "Shown: RIVN at 12.5."
    assert run.resumed is not None and run.resumed.restored_calls == 1
    # the server call and its result are back in the conversation, before the client's result
    roles = [(m["role"], [c["function"]["name"] for c in m.get("tool_calls", [])]) for m in second.messages]
    assert roles[:4] == [("user", []), ("assistant", ["get_price", "show_on_screen"]), ("tool", []), ("tool", [])]
    assert '"price":12.5' in second.messages[2]["content"] and second.messages[3]["content"] == '{"shown": true}'
    # token-exact: the continuation's prompt starts with the previous prompt and the ids the engine generated
    before = list(engine1.requests[0].prompt_ids) + engine1.ids_for(0) + [runner.chat.end_id]
    after = list(engine2.requests[0].prompt_ids)
    assert after[: len(before)] == before
    tail = runner.chat.decode(after[len(before):])
    assert tail.count("<tool_response>") == 2 and tail.endswith("<|im_start|>assistant\n")


def test_a_continuation_the_server_no_longer_knows_is_rendered_from_its_messages(runner):
    turn = call("get_price", symbol="RIVN") + "\n" + call("show_on_screen", text="RIVN")
    first, _, _, _ = runner.run([turn])
    messages = openai_continuation(first, "ok")
    second, engine, _, run = runner.run(["Done."], messages=messages, pending=PendingTurns())
    assert run.resumed is None and second.finish_reason == "stop"
    prompt = runner.chat.decode(engine.requests[0].prompt_ids)
    assert "show_on_screen" in prompt and prompt.count("<tool_response>") == 1


def test_pending_turns_expire_and_stay_bounded(runner):
    now = [0.0]
    pending = PendingTurns(max_entries=2, ttl_s=10, clock=lambda: now[0])
    results = [runner.run([call("show_on_screen", text=str(i))], pending=pending)[0] for i in range(3)]
    assert len(pending) == 2 and pending.find([results[0].tool_calls[0]["id"]]) is None
    assert pending.find([results[2].tool_calls[0]["id"]]) is not None
    now[0] = 11
    assert len(pending) == 0 and pending.find([results[2].tool_calls[0]["id"]]) is None


def test_client_tool_arguments_are_checked_against_the_clients_schema(runner):
    turns = [call("show_on_screen", text=5), call("show_on_screen", text="5")]
    result, engine, _, _ = runner.run(turns)
    assert result.finish_reason == "tool_calls" and len(engine.requests) == 2
    assert [c.status for c in result.calls] == ["invalid_args", "client"]
    assert "text: 5 is not of type 'string'" in runner.chat.decode(engine.requests[1].prompt_ids)


def test_a_client_tool_named_like_a_server_tool_is_refused(runner):
    clash = [{"type": "function", "function": {"name": "get_price", "parameters": {"type": "object"}}}]
    with pytest.raises(ToolOfferError, match="'get_price' has the name of a server tool"):
        runner.run(["x"], client_tools=clash)


@pytest.mark.parametrize("tools, message", [
    ({"name": "x"}, "JSON list"),
    ([{"type": "retrieval"}], "only function tools"),
    ([{"type": "function", "function": {"name": "a b"}}], "letters, digits"),
    ([{"type": "function", "function": {"name": "a", "parameters": {"type": "array"}}}], "object JSON Schema"),
    ([{"type": "function", "function": {"name": "a", "parameters": {"type": "object", "required": 3}}}],
     "not a valid JSON Schema"),
    (CLIENT_TOOLS * 2, "listed twice"),
])
def test_bad_client_tool_definitions_say_what_to_change(tools, message):
    with pytest.raises(ToolOfferError, match=message):
        client_tool_specs(tools)


# ---- tool_choice -----------------------------------------------------------------------------------------------

def test_tool_choice_none_bans_the_call_tag_on_every_turn(runner):
    result, engine, deltas, _ = runner.run(['{"name": "get_price", "arguments": {"symbol": "X"}}'],
                                           tool_choice=ToolChoice.parse("none"))
    assert result.finish_reason == "stop" and result.calls == ()
    (request,) = engine.requests
    assert request.bad_words == runner.chat.tool_call_words and request.guided is None
    assert "".join(deltas).startswith('{"name": "get_price"')  # a bare call object is text here


def test_tool_choice_none_refuses_a_call_the_model_still_spells_out(runner):
    result, _, _, _ = runner.run([call("get_price", symbol="RIVN")], tool_choice=ToolChoice.parse("none"))
    assert result.finish_reason == "incomplete" and "tool_choice is 'none'" in result.detail
    assert [c.status for c in result.calls] == ["not_run"]


def test_tool_choice_required_constrains_the_first_turn_only(runner):
    turns = [call_object("get_price", symbol="RIVN"), "RIVN is at 12.5."]
    result, engine, deltas, _ = runner.run(turns, tool_choice=ToolChoice.parse("required"))
    assert result.finish_reason == "stop" and "".join(deltas) == "RIVN is at 12.5."
    assert [(c.name, c.status) for c in result.calls] == [("get_price", "ok")]
    first, second = engine.requests
    assert first.guided.guide_type == "json_schema" and second.guided is None
    schema = json.loads(first.guided.guide)
    assert [b["properties"]["name"]["const"] for b in schema["anyOf"]] == ["get_price", "show_on_screen"]
    assert schema["anyOf"][0]["properties"]["arguments"] == {**SYMBOL, "additionalProperties": False}
    # the agent wrote the call tag as the template's markup: the prompt ends with the <tool_call> token
    forced = runner.chat.call_prefix(False)
    assert tuple(first.prompt_ids[-len(forced):]) == forced
    assert runner.chat.decode(forced) == "<tool_call>\n"
    assert runner.chat.tokenizer.convert_tokens_to_ids("<tool_call>") in forced
    # the next prompt holds the turn as the template renders it (the tag the agent wrote, then the object)
    assert '<tool_call>\n{"name": "get_price"' in runner.chat.decode(second.prompt_ids)


def test_a_named_tool_choice_guides_to_that_function(runner):
    turns = [call_object("show_on_screen", text="hello")]
    choice = ToolChoice.parse('{"type": "function", "function": {"name": "show_on_screen"}}')
    result, engine, _, _ = runner.run(turns, tool_choice=choice)
    assert result.finish_reason == "tool_calls"
    assert result.tool_calls[0]["function"] == {"name": "show_on_screen", "arguments": '{"text": "hello"}'}
    schema = json.loads(engine.requests[0].guided.guide)
    assert schema["properties"]["name"] == {"const": "show_on_screen"} and schema["required"] == ["name", "arguments"]


def test_a_tool_choice_naming_no_offered_tool_is_refused(runner):
    with pytest.raises(ToolChoiceError, match="'get_weather', which is not offered; offered: get_price"):
        runner.run(["x"], tool_choice=ToolChoice("function", "get_weather"))
    with pytest.raises(ToolChoiceError, match="needs at least one offered tool"):
        AgentRun(engine=None, chat=runner.chat, tools={}, executor=None, limits=AgentLimits(),
                 request=AgentRequest("r", USER, 10, tool_choice=ToolChoice("required")))


def test_nullable_schemas_become_standard_json_schema():
    schema = {"type": "object", "properties": {"n": {"type": "integer", "nullable": True, "description": "N."}}}
    assert standard_schema(schema)["properties"]["n"] == {"anyOf": [{"type": "integer"}, {"type": "null"}],
                                                          "description": "N."}


# ---- parallel_tool_calls -----------------------------------------------------------------------------------------

def test_parallel_tool_calls_false_ends_the_turn_at_its_first_call(runner):
    turns = [call("get_price", symbol="RIVN") + "\n" + call("get_price", symbol="NVDA"), "Done."]
    result, engine, _, _ = runner.run(turns, parallel=False)
    assert result.finish_reason == "stop"
    assert [(c.name, c.arguments) for c in result.calls] == [("get_price", {"symbol": "RIVN"})]
    assert engine.stopped == ["r-0"]  # the engine was told to stop after the first call closed
    assert "NVDA" not in runner.chat.decode(engine.requests[1].prompt_ids)


def test_parallel_tool_calls_false_keeps_one_call_of_a_block_with_several(runner):
    block = "<tool_call>\n" + call_object("get_price", symbol="A") + "\n" + call_object("get_price", symbol="B") \
        + "\n</tool_call>"
    result, _, _, _ = runner.run([block, "Done."], parallel=False)
    assert [c.arguments for c in result.calls] == [{"symbol": "A"}]


# ---- the client contract ----------------------------------------------------------------------------------------

def _decode(engine_inputs=("bad_words_list", "guided_decoding_guide_type", "guided_decoding_guide"), **values):
    arrays = {"text_input": np.array([[b"hi"]], dtype=object), "max_tokens": np.array([[16]], dtype=np.int32)}
    for name, value in values.items():
        arrays[name] = (np.array([[value]], dtype=np.bool_) if isinstance(value, bool)
                        else np.array([[value.encode()]], dtype=object))
    return decode_request(arrays, max_tokens_limit=100, max_input_chars=100_000, engine_inputs=engine_inputs)


def test_the_contract_reads_client_tools_tool_choice_and_parallel_tool_calls():
    request = _decode(client_tools=json.dumps(CLIENT_TOOLS), tool_choice="required", parallel_tool_calls=False)
    assert [t.name for t in request.client_tools] == ["show_on_screen"]
    assert request.tool_choice == ToolChoice("required") and request.parallel_tool_calls is False
    named = _decode(tool_choice='{"type": "function", "function": {"name": "show_on_screen"}}')
    assert named.tool_choice == ToolChoice("function", "show_on_screen") and named.parallel_tool_calls is True


@pytest.mark.parametrize("values, engine_inputs, message", [
    ({"tool_choice": "always"}, None, 'tool_choice must be "auto", "none", "required"'),
    ({"tool_choice": '{"type": "function"}'}, None, "a named tool_choice must be"),
    ({"client_tools": "[{"}, None, "client_tools is not valid JSON"),
    ({"client_tools": json.dumps([{"type": "function", "function": {"name": "x y"}}])}, None, "letters, digits"),
    ({"tool_choice": "required"}, ("bad_words_list",),
     "tool_choice 'required' is not supported by the engine model: it needs guided decoding"),
    ({"tool_choice": '{"type": "function", "function": {"name": "f"}}'}, (),
     "tool_choice function 'f' is not supported by the engine model"),
    ({"tool_choice": "none"}, ("guided_decoding_guide_type", "guided_decoding_guide"),
     "tool_choice 'none' is not supported by the engine model"),
])
def test_the_contract_refuses_what_the_client_must_change(values, engine_inputs, message):
    with pytest.raises(InvalidRequest, match=message):
        if engine_inputs is None:
            _decode(**values)
        else:
            _decode(engine_inputs, **values)
