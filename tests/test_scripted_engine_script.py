"""The scripted engine's Triton-free rules: script parsing, scenario and turn selection, token schedule."""

from __future__ import annotations

import json
import os

import pytest

from function_calling_agent.model_config import find_placeholders
from function_calling_agent.scripted_engine import script as cs
from function_calling_agent.scripted_engine.repository import make_scripted_engine, read_request_log, write_script

SYSTEM = "<|im_start|>system\nYou are a function calling AI model. <tools> [] </tools><|im_end|>\n"


def chat(user: str, *later_turns: str, generation_prompt: bool = True) -> str:
    text = SYSTEM + f"<|im_start|>user\n{user}<|im_end|>\n" + "".join(later_turns)
    return text + ("<|im_start|>assistant\n" if generation_prompt else "")


def assistant(content: str) -> str:
    return f"<|im_start|>assistant\n{content}<|im_end|>\n"


def tool(content: str) -> str:
    return f"<|im_start|>tool\n<tool_response>\n{content}\n</tool_response>\n<|im_end|>\n"


SCRIPT = {
    "scenarios": [
        {"name": "price", "match": "stock price", "turns": ["<tool_call>\nA\n</tool_call>", "Price: {tool_response}"]},
        {"name": "boom", "match": "BOOM", "turns": ["x"], "fail_at_turn": 1},
        {"name": "mid", "match": "MID", "turns": ["x"], "fail_after_tokens": 2},
        {"name": "mid1", "match": "LATE", "turns": ["x"], "fail_at_turn": 1, "fail_after_tokens": 3},
        {"name": "hang", "match": "HANG", "turns": ["x"], "hang_at_turn": 0, "emit_end_id": False,
         "token_latency_ms": 7.5},
    ],
    "default_turns": ["Hello.", "Again."],
}


@pytest.fixture
def script():
    return cs.CompletionScript.from_dict(SCRIPT)


def test_first_user_turn_picks_the_scenario_not_later_turns(script):
    assert script.plan(chat("What is the stock price of RIVN?")).scenario == "price"
    # The match text appearing only in a later turn or in the system prompt does not count.
    later = chat("hi", assistant("BOOM stock price"), "<|im_start|>user\nstock price<|im_end|>\n")
    assert script.plan(later).scenario == cs.DEFAULT_SCENARIO
    assert cs.first_user_text(chat("a\nb")) == "a\nb"
    assert cs.first_user_text("<|im_start|>system\nno user<|im_end|>") == ""


def test_first_matching_scenario_wins():
    both = cs.CompletionScript.from_dict(
        {"scenarios": [{"name": "a", "match": "x", "turns": ["A"]}, {"name": "b", "match": "xy", "turns": ["B"]}],
         "default_turns": ["D"]}
    )
    assert both.plan(chat("xy")).text == "A"


def test_turn_index_counts_assistant_headers_and_repeats_the_last_turn(script):
    assert script.plan(chat("stock price")).turn == 0
    first = script.plan(chat("stock price"))
    assert first.text == "<tool_call>\nA\n</tool_call>" and first.emit_end_id
    prompt = chat("stock price", assistant("<tool_call>\nA\n</tool_call>"), tool('{"name": "p", "content": 12.5}'))
    second = script.plan(prompt)
    assert (second.turn, second.text) == (1, 'Price: {"name": "p", "content": 12.5}')
    third = script.plan(chat("stock price", assistant("a"), tool("1"), assistant("b"), tool("  2  ")))
    assert (third.turn, third.text) == (2, "Price: 2")
    assert script.plan(chat("hello", assistant("a"), assistant("b"), assistant("c"))).text == "Again."
    assert cs.turn_index("no chat markup") == 0


def test_tool_response_slot_uses_the_last_block_and_is_empty_without_one(script):
    assert cs.last_tool_response("<tool_response>\n one \n</tool_response> <tool_response>two</tool_response>") == "two"
    assert cs.last_tool_response("<tool_response>cut off") == "cut off"
    assert script.plan(chat("stock price", assistant("a"))).text == "Price: "


def test_failure_and_hang_rules(script):
    boom0 = script.plan(chat("BOOM"))
    boom1 = script.plan(chat("BOOM", assistant("x")))
    assert (boom0.fail_after_tokens, boom1.fail_after_tokens) == (None, 0)
    mid = [script.plan(chat("MID", *[assistant("x")] * n)).fail_after_tokens for n in range(3)]
    assert mid == [2, 2, 2]
    late = [script.plan(chat("LATE", *[assistant("x")] * n)).fail_after_tokens for n in range(3)]
    assert late == [None, 3, None]
    hang = script.plan(chat("HANG"))
    assert hang.hang and not hang.emit_end_id and hang.token_latency_ms == 7.5
    assert not script.plan(chat("HANG", assistant("x"))).hang
    assert script.plan(chat("stock price")).token_latency_ms is None


def test_schedule_tokens_appends_end_id_and_honours_the_limit():
    assert cs.schedule_tokens([5, 6, 7], 2, True, 10) == ([5, 6, 7, 2], False)
    assert cs.schedule_tokens([5, 6, 7], 2, False, 10) == ([5, 6, 7], False)
    assert cs.schedule_tokens([5, 6, 7], 2, True, 4) == ([5, 6, 7, 2], False)
    assert cs.schedule_tokens([5, 6, 7], 2, True, 3) == ([5, 6, 7], True)
    assert cs.schedule_tokens([5, 6, 7], 2, True, 0) == ([], True)
    assert cs.schedule_tokens([], None, True, 5) == ([], False)


@pytest.mark.parametrize(
    "raw, message",
    [
        ([], "JSON object"),
        ({"default_turns": ["a"], "extra": 1}, "unknown field"),
        ({"scenarios": []}, "default_turns"),
        ({"default_turns": []}, "non-empty"),
        ({"default_turns": ["a"], "scenarios": [{"name": "a", "match": "b", "turns": ["c"], "fail_at": 1}]}, "fail_at"),
        ({"default_turns": ["a"], "scenarios": [{"name": "a", "turns": ["c"]}]}, "match"),
        ({"default_turns": ["a"], "scenarios": [{"name": "a", "match": "b", "turns": "c"}]}, "turns"),
        ({"default_turns": ["a"], "scenarios": [{"name": "a", "match": "b", "turns": ["c"], "hang_at_turn": -1}]},
         "hang_at_turn"),
        ({"default_turns": ["a"], "scenarios": [{"name": "a", "match": "b", "turns": ["c"], "emit_end_id": 0}]},
         "emit_end_id"),
        ({"default_turns": ["a"], "scenarios": [{"name": "a", "match": "b", "turns": ["c"], "token_latency_ms": "1"}]},
         "token_latency_ms"),
        ({"default_turns": ["a"], "scenarios": [{"name": "a", "match": "b", "turns": ["c"]}] * 2}, "unique"),
    ],
)
def test_invalid_scripts_are_rejected_with_the_field_named(raw, message):
    with pytest.raises(cs.ScriptError, match=message):
        cs.CompletionScript.from_dict(raw)


def test_script_file_reloads_when_changed(tmp_path):
    path = tmp_path / "script.json"
    path.write_text(json.dumps({"default_turns": ["one"]}), encoding="utf-8")
    script_file = cs.ScriptFile(path)
    assert script_file.get().default_turns == ("one",)
    path.write_text(json.dumps({"default_turns": ["two", "2"]}), encoding="utf-8")
    os.utime(path, ns=(1, 1))  # a new stamp even within the filesystem's mtime granularity
    assert script_file.get().default_turns == ("two", "2")
    path.write_text("{", encoding="utf-8")
    os.utime(path, ns=(2, 2))
    with pytest.raises(cs.ScriptError, match="cannot read script"):
        script_file.get()


def test_make_scripted_engine_fills_every_placeholder(tmp_path):
    engine = make_scripted_engine(tmp_path / "repo", SCRIPT, tmp_path / "tok", token_latency_ms=2.5, instance_count=3)
    assert engine == tmp_path / "repo" / "tensorrt_llm"
    config = (engine / "config.pbtxt").read_text(encoding="utf-8")
    assert find_placeholders(config) == frozenset() and "name:" not in config.split("backend:")[1].split("input [")[0]
    assert "count: 3" in config and 'string_value: "2.5"' in config
    assert json.loads((engine / "script.json").read_text(encoding="utf-8")) == SCRIPT
    assert (engine / "1" / "model.py").is_file()
    assert read_request_log(engine) == []
    with pytest.raises(cs.ScriptError):
        write_script(engine, {"default_turns": "oops"})
    with pytest.raises(FileExistsError):
        make_scripted_engine(tmp_path / "repo", SCRIPT, tmp_path / "tok")


def test_config_template_is_a_tensorrt_llm_contract(tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    engine = make_scripted_engine(tmp_path / "repo", SCRIPT, tmp_path / "tok")
    config = text_format.Parse((engine / "config.pbtxt").read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
    assert config.name == "" and config.max_batch_size > 0 and config.model_transaction_policy.decoupled
    inputs = {i.name: (model_config_pb2.DataType.Name(i.data_type), list(i.dims), i.optional) for i in config.input}
    assert inputs["input_ids"] == ("TYPE_INT32", [-1], False)
    assert inputs["request_output_len"] == ("TYPE_INT32", [1], False)
    assert inputs["stop_words_list"] == ("TYPE_INT32", [2, -1], True)
    assert inputs["random_seed"] == ("TYPE_UINT64", [1], True)
    outputs = {o.name: list(o.dims) for o in config.output}
    assert outputs == {"output_ids": [-1, -1], "sequence_length": [-1], "prefix_reused_tokens": [1]}
