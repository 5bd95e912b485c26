"""The incremental `<tool_call>` parser, the call reader and the client answer stream."""

from __future__ import annotations

import pytest

from function_calling_agent.tool_call_parser import (
    MAX_CALL_CHARS,
    AnswerStream,
    ToolCall,
    ToolCallFormatError,
    ToolCallParser,
    canonical_arguments,
    parse_tool_call,
)

CALL = '<tool_call>\n{"name": "get_price", "arguments": {"symbol": "RIVN"}}\n</tool_call>'


def feed_chunks(chunks) -> tuple[str, ToolCallParser]:
    parser = ToolCallParser()
    answer = "".join(parser.feed(chunk) for chunk in chunks)
    return answer + parser.finish(), parser


def feed_bytes(text: str, size: int = 1) -> tuple[str, ToolCallParser]:
    return feed_chunks([text[i: i + size] for i in range(0, len(text), size)])


# ---- splitting a turn ---------------------------------------------------------------------------------------------

def test_plain_answer_passes_through():
    answer, parser = feed_chunks(["The price ", "is 12 < 13 > 11."])
    assert answer == "The price is 12 < 13 > 11."
    assert parser.calls == [] and not parser.saw_call and not parser.unterminated


def test_text_before_a_call_is_answer_and_the_call_body_is_kept():
    answer, parser = feed_chunks(["Let me check.\n" + CALL])
    assert answer == "Let me check.\n"
    assert parser.calls == ['\n{"name": "get_price", "arguments": {"symbol": "RIVN"}}\n']
    assert parse_tool_call(parser.calls[0]) == ToolCall("get_price", {"symbol": "RIVN"})


def test_several_calls_in_one_turn_in_order():
    second = CALL.replace("RIVN", "TSLA")
    answer, parser = feed_chunks(["Checking both.\n" + CALL + "\n" + second])
    assert answer == "Checking both.\n"
    assert [parse_tool_call(c).arguments["symbol"] for c in parser.calls] == ["RIVN", "TSLA"]
    assert parser.text_after_calls == "\n"


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 11])
def test_calls_split_across_chunks_at_any_position(size):
    text = "Sure, 1 < 2.\n" + CALL + "\n" + CALL.replace("RIVN", "AAPL")
    whole, whole_parser = feed_chunks([text])
    split, split_parser = feed_bytes(text, size)
    assert split == whole == "Sure, 1 < 2.\n"
    assert split_parser.calls == whole_parser.calls and len(whole_parser.calls) == 2


def test_every_single_split_point_gives_the_same_result():
    text = "Hi <b>there</b>\n" + CALL + "assistant\n\n"
    expected = feed_chunks([text])
    for cut in range(len(text) + 1):
        answer, parser = feed_chunks([text[:cut], text[cut:]])
        assert (answer, parser.calls, parser.text_after_calls) == (expected[0], expected[1].calls,
                                                                   expected[1].text_after_calls), cut


def test_tag_prefix_is_held_back_until_decided():
    parser = ToolCallParser()
    assert parser.feed("Hello <tool_") == "Hello "
    assert parser.feed("call>") == ""
    assert parser.saw_call
    parser = ToolCallParser()
    assert parser.feed("a <tool_") == "a "
    assert parser.feed("box>") == "<tool_box>"  # not a tag after all: released


def test_trailing_text_after_a_call_never_reaches_the_answer():
    # TRT-LLM without an end id may go on with `assistant\n\n` after the call.
    answer, parser = feed_bytes(CALL + "assistant\n\nThe price is", 3)
    assert answer == ""
    assert "assistant" in parser.text_after_calls
    assert len(parser.calls) == 1


def test_stray_closing_tag_is_dropped():
    answer, parser = feed_bytes("Done.</tool_call> Bye.", 2)
    assert answer == "Done. Bye."
    assert parser.calls == []


def test_unterminated_call_still_counts_as_a_call():
    answer, parser = feed_chunks(["Wait.\n<tool_call>\n", '{"name": "get_price", "arguments": {"symbol": "A"}}'])
    assert answer == "Wait.\n"
    assert parser.unterminated
    assert parse_tool_call(parser.calls[0]) == ToolCall("get_price", {"symbol": "A"})


@pytest.mark.parametrize("fragment", ["<tool_c", "<t", "</tool_call", "</"])
def test_tag_prefix_left_at_the_end_of_a_turn_is_not_answer_text(fragment):
    answer, _ = feed_chunks(["Hello ", fragment])
    assert answer == "Hello "


def test_lone_angle_bracket_at_the_end_is_answer_text():
    assert feed_chunks(["1 <"])[0] == "1 <"


# ---- reading a call -----------------------------------------------------------------------------------------------

def test_nested_braces_and_braces_inside_strings():
    body = '{"name": "f", "arguments": {"filter": {"a": {"b": [1, {"c": 2}]}}, "text": "}{ \\"}\\" {"}}'
    call = parse_tool_call(body)
    assert call.arguments == {"filter": {"a": {"b": [1, {"c": 2}]}}, "text": '}{ "}" {'}


@pytest.mark.parametrize("body", [
    '{"name": "now", "arguments": {}}',
    '{"name": "now"}',
    '{"name": "now", "arguments": null}',
    '{"name": "now", "arguments": ""}',
    '{"name": "now", "arguments": "{}"}',
])
def test_tools_without_parameters(body):
    assert parse_tool_call(body) == ToolCall("now", {})


def test_arguments_given_as_a_json_string_or_under_parameters():
    assert parse_tool_call('{"name": "f", "arguments": "{\\"x\\": 1}"}').arguments == {"x": 1}
    assert parse_tool_call('{"name": "f", "parameters": {"x": 2}}').arguments == {"x": 2}


def test_single_quoted_pseudo_json_is_accepted_without_evaluating_code():
    assert parse_tool_call("{'name': 'get_price', 'arguments': {'symbol': 'RIVN', 'n': 2}}") == ToolCall(
        "get_price", {"symbol": "RIVN", "n": 2})
    with pytest.raises(ToolCallFormatError):
        parse_tool_call("{'name': __import__('os').getcwd(), 'arguments': {}}")


@pytest.mark.parametrize("body, words", [
    ("", "empty"),
    ('{"name": "f", "arguments": {"x": 1}', "not valid JSON"),
    ('["f", {}]', "JSON object"),
    ('{"arguments": {}}', '"name"'),
    ('{"name": "f", "arguments": [1, 2]}', "must be a JSON object"),
    ('{"name": "f", "arguments": "not json"}', "not valid JSON"),
])
def test_malformed_calls_get_an_error_written_for_the_model(body, words):
    with pytest.raises(ToolCallFormatError, match=words):
        parse_tool_call(body)


def test_error_for_invalid_json_says_where_and_how_to_fix():
    with pytest.raises(ToolCallFormatError) as info:
        parse_tool_call('{"name": "f", "arguments": {"x": }}')
    assert "line 1 column" in str(info.value) and "double-quoted" in str(info.value)


def test_oversized_call_is_refused_without_parsing():
    body = '{"name": "f", "arguments": {"x": "' + "a" * MAX_CALL_CHARS + '"}}'
    with pytest.raises(ToolCallFormatError, match="longer than"):
        parse_tool_call(body)


def test_canonical_arguments_keep_unicode_and_order():
    assert canonical_arguments({"b": "株価", "a": [1, {}]}) == '{"b": "株価", "a": [1, {}]}'


# ---- the client answer stream -------------------------------------------------------------------------------------

def test_answer_stream_drops_leading_whitespace_and_holds_trailing_whitespace():
    stream = AnswerStream()
    deltas = [stream.push("\n  "), stream.push(" Hello "), stream.push("world\n"), stream.end_turn()]
    assert deltas == ["", "Hello", " world", ""]
    assert stream.text == "Hello world"


def test_answer_stream_separates_successive_turns():
    stream = AnswerStream()
    out = [stream.push("Let me check.\n"), stream.end_turn(), stream.push("\nIt is 12."), stream.end_turn()]
    assert "".join(out) == stream.text == "Let me check.\n\nIt is 12."
    # A turn with no answer text adds no separator.
    stream = AnswerStream()
    assert stream.end_turn() == "" and stream.push(" It is 12.") == "It is 12."


def test_answer_stream_stop_word_ends_the_answer_and_is_excluded():
    stream = AnswerStream(stop_words=("STOP", "##"))
    out = [stream.push("The answer is 4 ST"), stream.push("OP and more"), stream.push("ignored")]
    assert "".join(out) == stream.text == "The answer is 4"
    assert stream.stopped_by == "STOP"
    assert stream.end_turn() == ""


def test_answer_stream_holds_a_stop_word_prefix_then_releases_it():
    stream = AnswerStream(stop_words=("STOP",))
    assert stream.push("Go ST") == "Go"
    assert stream.push("ART now") == " START now"
    assert stream.stopped_by is None


def test_a_tag_prefix_before_a_stray_closing_tag_is_held_whatever_the_chunking():
    # Found by the fuzzer: `</tool_` then a stray `</tool_call>`; cut inside the stray tag, the prefix used to be
    # released as answer text, while the whole text leaves only a tag fragment (dropped at the end of the turn).
    text = "</tool_call></tool_</tool_call>"
    whole = ToolCallParser()
    expected = whole.feed(text) + whole.finish()
    for cut in range(len(text) + 1):
        parser = ToolCallParser()
        assert parser.feed(text[:cut]) + parser.feed(text[cut:]) + parser.finish() == expected == ""
