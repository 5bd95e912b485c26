"""Finding Hermes `<tool_call>` blocks in a stream of text deltas, and reading the JSON inside them.

The parser is fed text as it is decoded. Text that cannot be the start of a `<tool_call>` is released at once; a
suffix that could be (`<`, `<tool_c`, ...) is held back until the next delta decides. The result does not depend on
how the stream was split.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from typing import Any, Iterable, Optional, Union

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
# Longer calls are refused without parsing: a model that rambles inside a call must not cost unbounded CPU.
MAX_CALL_CHARS = 32_768


def _held_suffix_len(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker`."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


def _tag_tail_len(text: str) -> int:
    """Length of the tail of `text` that may still become part of a tag: a tag prefix F, optionally followed by the
    start C of a stray `</tool_call>` (stray closing tags are removed and what they separated is joined, so F + C +
    `ool_call>` + `call>` can become `<tool_call>`). Holding exactly this makes the result independent of chunking."""
    if "<" not in text[-(len(TOOL_CALL_OPEN) + len(TOOL_CALL_CLOSE)):]:
        return 0  # every tag prefix, and a stray closing tag's, starts with "<" (the common case: one test per delta)
    best = 0
    for close_len in range(0, min(len(text), len(TOOL_CALL_CLOSE) - 1) + 1):
        rest = text[: len(text) - close_len]
        if close_len and not TOOL_CALL_CLOSE.startswith(text[len(rest):]):
            continue
        tag_len = max(_held_suffix_len(rest, TOOL_CALL_OPEN), _held_suffix_len(rest, TOOL_CALL_CLOSE))
        best = max(best, close_len + tag_len)
    return best


class ToolCallParser:
    """Splits the answer part of one assistant turn into answer text and raw tool-call bodies.

    `tool_names`: the offered tools. A turn that opens with a JSON call object naming one of them and closes it with
    `</tool_call>` (the opening tag forgotten) is a call too; until that is decided such text is held back.
    Inside a call, a `</tool_call>` within a JSON string is part of the string, not the end of the call.
    """

    def __init__(self, tool_names: Iterable[str] = ()):
        self._tool_names = frozenset(tool_names)
        self._buffer = ""
        self._in_call = False
        self._scan = _JsonScan()
        self._started = False  # non-whitespace text was seen
        self._bare: Optional[_JsonScan] = None  # scanning a call object the turn opened with, undecided
        self.calls: list[str] = []
        self.unterminated = False
        # Text after the first call of a turn (whitespace, stray `assistant` echoes) is not answer text.
        self.text_after_calls = ""

    @property
    def saw_call(self) -> bool:
        return bool(self.calls) or self._in_call

    def feed(self, text: str) -> str:
        """Adds a delta; returns the answer text that is now certain (never part of a tool tag or call)."""
        self._buffer += text
        answer: list[str] = []
        while True:
            if self._bare is not None:
                if not self._feed_bare(answer):
                    break
            elif self._in_call:
                end = self._scan.find_close(self._buffer)
                if end is None:
                    break
                self.calls.append(self._buffer[:end])
                self._buffer = self._buffer[end + len(TOOL_CALL_CLOSE):]
                self._in_call = False
            else:
                if not self._started:
                    stripped = self._buffer.lstrip()
                    if not stripped:
                        break
                    self._started = True
                    if stripped.startswith("{") and self._tool_names:
                        self._bare = _JsonScan()
                        continue
                start = self._buffer.find(TOOL_CALL_OPEN)
                stray = self._buffer.find(TOOL_CALL_CLOSE)
                if 0 <= stray and (start < 0 or stray < start):
                    # A closing tag with no opening one is markup, not answer text: drop it, then look again at
                    # what it separated (`<tool_` + `call>` is a tag).
                    self._buffer = self._buffer[:stray] + self._buffer[stray + len(TOOL_CALL_CLOSE):]
                    continue
                if start < 0:
                    keep = _tag_tail_len(self._buffer)
                    self._release(self._buffer[: len(self._buffer) - keep], answer)
                    self._buffer = self._buffer[len(self._buffer) - keep:]
                    break
                self._release(self._buffer[:start], answer)
                self._buffer = self._buffer[start + len(TOOL_CALL_OPEN):]
                self._in_call = True
                self._scan = _JsonScan()
        return "".join(answer)

    def _feed_bare(self, answer: list[str]) -> bool:
        """Advances the undecided opening call object; returns True when decided (parsing goes on)."""
        verdict, end = self._bare.bare_call_end(self._buffer)
        if verdict == "wait":
            return False
        body = self._buffer[:end] if verdict == "call" else ""
        if verdict == "call" and _names_offered_tools(body, self._tool_names):
            self.calls.append(body)
            self._buffer = self._buffer[end + len(TOOL_CALL_CLOSE):]
        self._bare = None  # not a call: the text goes through the normal path
        return True

    def _release(self, text: str, answer: list[str]) -> None:
        if self.saw_call:
            self.text_after_calls += text
        else:
            answer.append(text)

    def finish(self) -> str:
        """Ends the turn. An unclosed `<tool_call>` still counts as a call (its body may be complete JSON); so does an
        opening call object for an offered tool cut off before its end."""
        if self._bare is not None:
            self._bare = None
            if not self._scan_complete(self._buffer) and _CALL_START.match(self._buffer) \
                    and _CALL_START.match(self._buffer).group(1) in self._tool_names:
                self.unterminated = True
                self.calls.append(self._buffer)
                self._buffer = ""
                return ""
            answer = self.feed("")
            return answer + self.finish()
        rest, self._buffer = self._buffer, ""
        if self._in_call:
            self._in_call = False
            self.unterminated = True
            self.calls.append(rest)
            return ""
        if len(rest) >= 2:
            # Only a held-back tag prefix can be left here (`<tool_c`): a fragment of markup, not answer text.
            rest = ""
        answer: list[str] = []
        self._release(rest, answer)
        return "".join(answer)

    @staticmethod
    def _scan_complete(text: str) -> bool:
        scan = _JsonScan()
        return scan.bare_call_end(text + TOOL_CALL_CLOSE)[0] == "call"


_CALL_START = re.compile(r'\s*\{\s*"name"\s*:\s*"([^"\\]{1,64})"')


def _names_offered_tools(body: str, tool_names: frozenset) -> bool:
    try:
        calls = parse_tool_calls(body)
    except ToolCallFormatError:
        return False
    return bool(calls) and all(isinstance(c, ToolCall) and c.name in tool_names for c in calls)


class _JsonScan:
    """Tracks JSON string and nesting state over a growing text, so markup inside JSON strings is not markup."""

    def __init__(self):
        self.pos = 0
        self.in_string = False
        self.escaped = False
        self.depth = 0

    def _step(self, char: str) -> None:
        if self.in_string:
            if self.escaped:
                self.escaped = False
            elif char == "\\":
                self.escaped = True
            elif char == '"':
                self.in_string = False
        elif char == '"':
            self.in_string = True
        elif char in "{[":
            self.depth += 1
        elif char in "}]":
            self.depth -= 1

    def find_close(self, text: str) -> Optional[int]:
        """Index of the first `</tool_call>` outside JSON strings, or None while undecided."""
        while self.pos < len(text):
            if not self.in_string and text[self.pos] == "<":
                if text.startswith(TOOL_CALL_CLOSE, self.pos):
                    return self.pos
                if TOOL_CALL_CLOSE.startswith(text[self.pos:]):
                    return None  # maybe the tag: wait for more
            self._step(text[self.pos])
            self.pos += 1
        return None

    def bare_call_end(self, text: str) -> tuple[str, int]:
        """For a text opening with JSON objects: ("call", index of the `</tool_call>` that follows them),
        ("text", 0) when something else follows, or ("wait", 0) while undecided."""
        while self.pos < len(text):
            char = text[self.pos]
            if self.depth == 0 and not self.in_string:
                if char.isspace() or char == ",":
                    self.pos += 1
                    continue
                if char == "<":
                    if text.startswith(TOOL_CALL_CLOSE, self.pos):
                        return "call", self.pos
                    if TOOL_CALL_CLOSE.startswith(text[self.pos:]):
                        return "wait", 0
                    return "text", 0
                if char not in "{[":
                    return "text", 0
            self._step(char)
            self.pos += 1
            if self.depth < 0:
                return "text", 0
        return "wait", 0


class ToolCallFormatError(ValueError):
    """The body of a `<tool_call>` is not a call the agent can read. The message is written for the model."""


@dataclasses.dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict


def parse_tool_calls(body: str) -> list[Union[ToolCall, ToolCallFormatError]]:
    """The calls in one `<tool_call>` block: one call object, several one after another, or a JSON list of them.

    Each item is a `ToolCall`, or the `ToolCallFormatError` (written for the model) of a part that cannot be read.
    """
    text = body.strip()
    try:
        values = _load_values(text)
    except ToolCallFormatError as exc:
        return [exc]
    out: list[Union[ToolCall, ToolCallFormatError]] = []
    for value in values:
        try:
            out.append(value if isinstance(value, ToolCallFormatError) else _as_call(value))
        except ToolCallFormatError as exc:
            out.append(exc)
    return out


def _load_values(text: str) -> list:
    if not text:
        raise ToolCallFormatError('the <tool_call> block is empty; write {"name": <tool name>, "arguments": {...}}')
    if len(text) > MAX_CALL_CHARS:
        raise ToolCallFormatError(f"the tool call is longer than {MAX_CALL_CHARS} characters")
    if text.startswith("["):
        value = _load_object(text)
        if isinstance(value, list) and value:
            return value
        raise ToolCallFormatError("a list of tool calls must hold call objects")
    decoder = json.JSONDecoder()
    values: list = []
    index = 0
    while index < len(text):
        try:
            value, index = decoder.raw_decode(text, index)
        except json.JSONDecodeError:
            if not values:
                return [_load_object(text)]  # single-quoted pseudo-JSON, or the error for the model
            values.append(ToolCallFormatError(
                f"the text after the first {len(values)} call(s) is not a call object: {text[index:index + 80]!r}"))
            break
        except (ValueError, RecursionError):
            raise ToolCallFormatError("the tool call is not JSON an agent can read (too deeply nested or too large)")
        values.append(value)
        while index < len(text) and (text[index].isspace() or text[index] == ","):
            index += 1
    return values


def parse_tool_call(body: str) -> ToolCall:
    """Reads `{"name": ..., "arguments": {...}}`. Tolerates single-quoted pseudo-JSON; never evaluates code."""
    text = body.strip()
    if not text:
        raise ToolCallFormatError('the <tool_call> block is empty; write {"name": <tool name>, "arguments": {...}}')
    if len(text) > MAX_CALL_CHARS:
        raise ToolCallFormatError(f"the tool call is longer than {MAX_CALL_CHARS} characters")
    return _as_call(_load_object(text))


def _as_call(value: Any) -> ToolCall:
    if not isinstance(value, dict):
        raise ToolCallFormatError('a tool call must be a JSON object like {"name": <tool name>, "arguments": {...}}')
    name = value.get("name")
    if not isinstance(name, str) or not name:
        raise ToolCallFormatError('the tool call has no "name" string')
    arguments: Any = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        arguments = _load_object(arguments) if arguments.strip() else {}
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise ToolCallFormatError(f'"arguments" of the call to {name!r} must be a JSON object')
    return ToolCall(name=name, arguments=arguments)


def _load_object(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        json_error = exc
    except (ValueError, RecursionError):  # huge integers, deep nesting
        raise ToolCallFormatError("the tool call is not JSON an agent can read (too deeply nested or too large)")
    try:
        # ast.literal_eval accepts only literals (Python-style quotes, True/None); it never runs code.
        value = ast.literal_eval(text)
        json.dumps(value)  # sets, bytes, complex numbers or tuple keys are literals but not JSON
        return value
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    raise ToolCallFormatError(
        f"the tool call is not valid JSON ({json_error.msg} at line {json_error.lineno} column {json_error.colno}); "
        'write {"name": <tool name>, "arguments": {...}} with double-quoted keys and strings'
    )


def canonical_arguments(arguments: dict) -> str:
    return json.dumps(arguments, ensure_ascii=False, separators=(", ", ": "))


class AnswerStream:
    """Turns the answer text of successive turns into client deltas.

    Whitespace at the very start is dropped; trailing whitespace is held until more text follows (so the newline
    before a `<tool_call>` never reaches the client); text continuing after a tool round is separated by a blank
    line; the first stop word ends the answer and is not included.
    """

    SEPARATOR = "\n\n"

    def __init__(self, stop_words: tuple[str, ...] = ()):
        self._stop_words = tuple(w for w in stop_words if w)
        self._pending = ""
        self._needs_separator = False
        self._parts: list[str] = []
        self.stopped_by: Optional[str] = None

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def push(self, text: str) -> str:
        if self.stopped_by is not None or not text:
            return ""
        self._pending += text
        if not self._parts:
            self._pending = self._pending.lstrip()
        hit = self._first_stop_word()
        if hit is not None:
            index, word = hit
            self.stopped_by = word
            out = self._pending[:index].rstrip()
            self._pending = ""
            return self._emit(out)
        held = max([_held_suffix_len(self._pending, w) for w in self._stop_words] + [0])
        safe = self._pending[: len(self._pending) - held]
        safe_stripped = safe.rstrip()
        self._pending = self._pending[len(safe_stripped):]
        return self._emit(safe_stripped)

    def end_turn(self) -> str:
        """The turn ended in tool calls (or the answer ended): flush what was held, minus trailing whitespace."""
        out = self._pending.rstrip() if self.stopped_by is None else ""
        self._pending = ""
        delta = self._emit(out)
        if self._parts:
            self._needs_separator = True
        return delta

    def _emit(self, text: str) -> str:
        if not text:
            return ""
        if self._needs_separator:
            text = self.SEPARATOR + text.lstrip()
            self._needs_separator = False
        self._parts.append(text)
        return text

    def _first_stop_word(self):
        best = None
        for word in self._stop_words:
            index = self._pending.find(word)
            if index >= 0 and (best is None or index < best[0]):
                best = (index, word)
        return best
