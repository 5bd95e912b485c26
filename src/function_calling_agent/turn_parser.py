"""One assistant turn's text split into reasoning, answer text and tool calls, as it streams.

Reasoning is a `<think>` block at the start of the turn, or the block the generation prompt opened (QwQ, Qwen3
*-Thinking). A `<tool_call>` inside a think block the model closes later is reasoning; one after a think block the
model never closes is a call (models forget to close it), decided at the end of the turn. Until then, reasoning from
the first drafted call on is held back, so tool JSON reaches the reasoning stream only when it was reasoning.
"""

from __future__ import annotations

from typing import Iterable

from .chat_format import THINK_CLOSE, THINK_OPEN, TOOL_CALL_OPEN
from .tool_call_parser import ToolCallParser, _held_suffix_len

REASONING, ANSWER = "reasoning", "answer"


class ThinkSplitter:
    """Routes text to reasoning or content. `in_reasoning`: the generation prompt opened a think block."""

    def __init__(self, in_reasoning: bool):
        self._state = "reasoning" if in_reasoning else "start"
        self.opened = in_reasoning
        self.closed = False
        self._buffer = ""

    @property
    def in_reasoning(self) -> bool:
        return self._state == "reasoning"

    def feed(self, text: str) -> list[tuple[str, str]]:
        self._buffer += text
        out: list[tuple[str, str]] = []
        while self._buffer:
            if self._state == "start":
                stripped = self._buffer.lstrip()
                if stripped.startswith(THINK_OPEN):
                    self._state, self.opened = "reasoning", True
                    self._buffer = stripped[len(THINK_OPEN):]
                    continue
                if not stripped or THINK_OPEN.startswith(stripped):
                    break  # only whitespace, or maybe the opening tag: wait
                self._state = "content"
            elif self._state == "reasoning":
                end = self._buffer.find(THINK_CLOSE)
                if end >= 0:
                    out.append((REASONING, self._buffer[:end]))
                    self._buffer = self._buffer[end + len(THINK_CLOSE):]
                    self._state, self.closed = "content", True
                    continue
                keep = _held_suffix_len(self._buffer, THINK_CLOSE)
                out.append((REASONING, self._buffer[: len(self._buffer) - keep]))
                self._buffer = self._buffer[len(self._buffer) - keep:]
                break
            else:
                out.append((ANSWER, self._buffer))
                self._buffer = ""
        return [(kind, text) for kind, text in out if text]

    def finish(self) -> list[tuple[str, str]]:
        rest, self._buffer = self._buffer, ""
        if not rest:
            return []
        return [(REASONING if self._state == "reasoning" else ANSWER, rest)]


class TurnParser:
    """Reasoning deltas, answer deltas and the raw tool-call bodies of one turn.

    `think`: whether `<think>` blocks are markup for this model (its tokenizer has the tokens, or its generation
    prompt opens one). `feed` and `finish` return `(kind, text)` deltas, kind `reasoning` or `answer`.
    """

    def __init__(self, tool_names: Iterable[str] = (), *, think: bool = False, in_reasoning: bool = False):
        self._think = ThinkSplitter(in_reasoning) if think or in_reasoning else None
        self._answer = ToolCallParser(tuple(tool_names))
        self._pending = ""  # reasoning not yet released: a maybe-tag tail, or everything from a drafted call on
        self._holding = False
        self.calls: list[str] = []
        self.unterminated = False

    @property
    def in_reasoning(self) -> bool:
        return self._think is not None and self._think.in_reasoning

    @property
    def closed_calls(self) -> int:
        """`<tool_call>` blocks closed so far outside reasoning (calls drafted in a think block do not count)."""
        return len(self._answer.calls)

    def feed(self, text: str) -> list[tuple[str, str]]:
        parts = self._think.feed(text) if self._think is not None else [(ANSWER, text)]
        return self._route(parts)

    def finish(self) -> list[tuple[str, str]]:
        out = self._route(self._think.finish()) if self._think is not None else []
        if self._think is not None and self._think.opened and not self._think.closed:
            # A think block the model never closed: the calls drafted in it are the turn's calls.
            drafts = ToolCallParser()
            drafts.feed(self._pending)
            drafts.finish()
            if not drafts.calls and self._pending:
                out.append((REASONING, self._pending))
            self._pending = ""
            self.calls, self.unterminated = list(drafts.calls), drafts.unterminated
            return out
        tail = self._answer.finish()
        if tail:
            out.append((ANSWER, tail))
        self.calls, self.unterminated = list(self._answer.calls), self._answer.unterminated
        return out

    def _route(self, parts: list[tuple[str, str]]) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for kind, text in parts:
            if kind == REASONING:
                released = self._hold_drafts(text)
                if released:
                    out.append((REASONING, released))
                continue
            if self._pending:  # the think block closed: what was held was reasoning after all
                out.append((REASONING, self._pending))
                self._pending, self._holding = "", False
            answer = self._answer.feed(text)
            if answer:
                out.append((ANSWER, answer))
        if self._think is not None and self._think.closed and self._pending:
            out.append((REASONING, self._pending))
            self._pending, self._holding = "", False
        return out

    def _hold_drafts(self, text: str) -> str:
        """Reasoning that is certain now: everything before a drafted `<tool_call>` (or a tail that may start one)."""
        if self._holding:
            self._pending += text
            return ""
        text = self._pending + text
        start = text.find(TOOL_CALL_OPEN)
        if start >= 0:
            self._pending, self._holding = text[start:], True
            return text[:start]
        keep = _held_suffix_len(text, TOOL_CALL_OPEN)
        self._pending = text[len(text) - keep:]
        return text[: len(text) - keep]
