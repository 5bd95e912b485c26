"""Turns that ended in client tool calls, kept so that the client's continuation picks up where the run stopped.

An OpenAI client continues a conversation by sending back the assistant message it received (only the client
calls) and its `role: "tool"` results. The turn also held server calls, whose results the model saw or must see, and
the run had the turn's exact token ids. `PendingTurns` keeps both, keyed by the client call ids it handed out, for a
bounded time: when a request's last assistant message with tool calls is one of them, the server calls and their
results are put back (a client that sends the full message from `tool_trace.messages` needs nothing put back), and
the prompt reuses the previous prompt's ids and the turn's generated ids for as long as the rendering matches, so
the round trip is token-exact where the history matches.

Kept per model instance (process): a continuation that reaches another instance or server, or comes after
`ttl_s`, is rendered from the messages alone (the server calls the client did not send back are then missing).
"""

from __future__ import annotations

import collections
import dataclasses
import time
from typing import Callable, Optional, Sequence

from .chat_format import Prompt

DEFAULT_MAX_ENTRIES = 1024
DEFAULT_TTL_S = 900.0


@dataclasses.dataclass(frozen=True)
class PendingTurn:
    assistant: dict  # the turn's full assistant message (server and client calls)
    server_results: tuple[dict, ...]  # the tool messages answering its other calls
    client_ids: frozenset  # ids of the calls the client runs
    prompt: Prompt  # the prompt the turn was generated on
    generated: tuple[int, ...]  # the turn's ids as generated

    @property
    def call_ids(self) -> frozenset:
        return frozenset(c["id"] for c in self.assistant.get("tool_calls", ()))


@dataclasses.dataclass(frozen=True)
class Resumed:
    """A continuation matched a pending turn: its messages with the turn restored."""

    messages: tuple[dict, ...]
    turn: PendingTurn
    restored_calls: int  # server calls (and their results) put back


class PendingTurns:
    """A bounded, expiring map of client call id -> the pending turn it belongs to. One event loop uses it."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, ttl_s: float = DEFAULT_TTL_S,
                 clock: Callable[[], float] = time.monotonic):
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: "collections.OrderedDict[str, tuple[float, PendingTurn]]" = collections.OrderedDict()

    def __len__(self) -> int:
        self._expire()
        return len(self._entries)

    def save(self, turn: PendingTurn) -> None:
        expires = self._clock() + self.ttl_s
        for call_id in turn.client_ids:
            self._entries[call_id] = (expires, turn)
            self._entries.move_to_end(call_id)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        self._expire()

    def _expire(self) -> None:
        now = self._clock()
        while self._entries:
            key, (expires, _) = next(iter(self._entries.items()))
            if expires > now:
                break
            del self._entries[key]

    def find(self, call_ids: Sequence[str]) -> Optional[PendingTurn]:
        self._expire()
        for call_id in call_ids:
            hit = self._entries.get(call_id)
            if hit is not None and set(call_ids) <= hit[1].call_ids:
                return hit[1]
        return None

    def resume(self, messages: Sequence[dict]) -> Optional[Resumed]:
        """The continuation of a pending turn, when the last assistant message with tool calls is one; else None."""
        index = next((i for i in range(len(messages) - 1, -1, -1)
                      if messages[i].get("role") == "assistant" and messages[i].get("tool_calls")), None)
        if index is None:
            return None
        sent = messages[index]
        turn = self.find([c["id"] for c in sent["tool_calls"]])
        if turn is None:
            return None
        answered = {m.get("tool_call_id") for m in messages[index + 1:] if m.get("role") == "tool"}
        missing = [m for m in turn.server_results if m.get("tool_call_id") not in answered]
        complete = {c["id"] for c in sent["tool_calls"]} == turn.call_ids
        restored = [*messages[:index], sent if complete else turn.assistant, *missing, *messages[index + 1:]]
        return Resumed(tuple(restored), turn, len(turn.call_ids) - len(sent["tool_calls"]))
