"""Kinds of model output taken from public bug reports, each as the model's whole turn, through the agent core.

Each test is a kind, not a single string: the inputs are the ones the bug reports showed, and the expectation is the
right value for the kind (the call text intact, every call run, nothing streamed, the cause named, never silent).
"""

from __future__ import annotations

import asyncio
import json

import pytest

from function_calling_agent.run import AgentLimits, AgentRequest, AgentRun
from function_calling_agent.tool_call_parser import ToolCall, ToolCallParser, parse_tool_calls
from function_calling_agent.tools.execution import ToolExecutor
from function_calling_agent.tools.spec import ToolSpec
from tests.support.scripted_engine_client import ScriptedEngine

SYMBOL = {"type": "object", "properties": {"symbol": {"type": "string"}}, "required": ["symbol"]}
NOTE = {"type": "object", "properties": {"path": {"type": "string"}, "text": {"type": "string"}},
        "required": ["path", "text"]}
ran: list = []


def _tool(name, schema):
    def run(**kwargs):
        ran.append((name, kwargs))
        return {"ok": True}
    return ToolSpec(name, name, schema, run)


TOOLS = {"write_note": _tool("write_note", NOTE), "get_current_stock_price": _tool("get_current_stock_price", SYMBOL),
         "get_company_news": _tool("get_company_news", SYMBOL)}

NOTE_CALL = ('<tool_call>\n{"name": "write_note", "arguments": {"path": "notes/tags.md", "text": "Wrap each call in '
             '<tool_call> and </tool_call> tags."}}\n</tool_call>')
TWO_IN_ONE = ('<tool_call>\n{"name": "get_current_stock_price", "arguments": {"symbol": "RIVN"}}\n'
              '{"name": "get_company_news", "arguments": {"symbol": "RIVN"}}\n</tool_call>')
NO_OPENING_TAG = '{"name": "get_current_stock_price", "arguments": {"symbol": "RIVN"}}\n</tool_call>'


@pytest.fixture(autouse=True)
def _clear():
    ran.clear()


def play(chat, tokenizer, turns, max_tokens=200, **limits):
    engine = ScriptedEngine(tokenizer, turns)
    deltas: list[str] = []

    async def on_text(delta):
        deltas.append(delta)

    run = AgentRun(engine=engine, chat=chat, tools=TOOLS, executor=ToolExecutor(), limits=AgentLimits(**limits),
                   request=AgentRequest("k", ({"role": "user", "content": "go"},), max_tokens), on_text=on_text)
    return asyncio.run(run.run()), engine, "".join(deltas)


def test_a_closing_tag_inside_a_json_string_does_not_end_the_call(chat, tokenizer):
    result, _, streamed = play(chat, tokenizer, [NOTE_CALL, "Saved."])
    assert ran == [("write_note", {"path": "notes/tags.md",
                                   "text": "Wrap each call in <tool_call> and </tool_call> tags."})]
    assert [c.status for c in result.calls] == ["ok"] and result.usage["repair_turns"] == 0
    assert streamed == "Saved."


def test_two_call_objects_in_one_block_are_two_calls(chat, tokenizer):
    result, engine, _ = play(chat, tokenizer, [TWO_IN_ONE, "Done."])
    assert [(c.name, c.status) for c in result.calls] == [("get_current_stock_price", "ok"),
                                                          ("get_company_news", "ok")]
    assert result.usage["repair_turns"] == 0 and result.usage["iterations"] == 1
    ids = {c["id"] for m in result.messages for c in m.get("tool_calls", ())}
    assert len(ids) == 2 and ids == {m["tool_call_id"] for m in result.messages if m["role"] == "tool"}


def test_a_json_list_of_calls_is_several_calls():
    calls = parse_tool_calls('[{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"x": 1}}]')
    assert calls == [ToolCall("a", {}), ToolCall("b", {"x": 1})]


def test_a_call_whose_opening_tag_is_missing_is_a_call_and_never_streamed(chat, tokenizer):
    result, _, streamed = play(chat, tokenizer, [NO_OPENING_TAG, "RIVN is at 12."])
    assert [(c.name, c.status) for c in result.calls] == [("get_current_stock_price", "ok")]
    assert streamed == "RIVN is at 12." and "{" not in streamed and "tool_call" not in streamed


@pytest.mark.parametrize("text", [
    '{"name": "not_offered", "arguments": {}}\n</tool_call>',  # names no offered tool: text
    '{"answer": 42}',  # a JSON answer
    '{"name": "get_current_stock_price", "arguments": {"symbol": "RIVN"}} is what I would call.',
])
def test_json_that_is_not_a_call_is_answer_text(text):
    parser = ToolCallParser(TOOLS)
    answer = "".join(parser.feed(ch) for ch in text) + parser.finish()
    assert parser.calls == [] and answer == text.replace("</tool_call>", "")


def test_a_call_cut_off_by_max_tokens_ends_the_run_length_naming_it(chat, tokenizer):
    long_text = "x" * 5400
    cut = '<tool_call>\n{"name": "write_note", "arguments": {"path": "a.md", "text": "' + long_text + '"}}\n</tool_call>'
    result, engine, streamed = play(chat, tokenizer, [cut, "never"], max_tokens=120)
    assert result.finish_reason == "length" and len(engine.requests) == 1
    assert result.detail == "the tool call to 'write_note' was cut off by max_tokens (120): raise max_tokens"
    assert result.usage["repair_turns"] == 0 and result.calls == () and streamed == ""


def test_an_empty_answer_after_tool_results_is_reported(chat, tokenizer):
    result, _, streamed = play(chat, tokenizer, ['<tool_call>\n{"name": "get_current_stock_price", "arguments": '
                                                 '{"symbol": "RIVN"}}\n</tool_call>', ""])
    assert result.finish_reason == "stop" and result.text == "" and streamed == ""
    assert result.empty_answer
    assert result.detail.startswith("empty answer: the model ended its turn without an answer after the tool results")
    assert json.loads(json.dumps(result.trace()))["detail"] == result.detail
