"""What happened in one agent run: the conversation in OpenAI form, the engine turns, the tool calls and rounds.

Every record is an immutable value appended by the step that made it; `usage` is computed from the records.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from typing import Any, Optional, Sequence

from .tool_call_parser import canonical_arguments
from .tools.spec import ToolStatus
from .turn import EngineTurn


@dataclasses.dataclass(frozen=True)
class CallRecord:
    """One tool call as the client sees it in the trace and the metrics."""

    turn: int
    name: str
    arguments: Any
    status: str
    latency_ms: float = 0.0
    error: Optional[str] = None
    server: Optional[str] = None  # the MCP server's label; None for module tools


class RoundKind(str, enum.Enum):
    TOOLS = "tools"  # the turn's valid calls ran (an iteration)
    REPAIR = "repair"  # the turn held only invalid calls: errors went back to the model
    REFUSED = "refused"  # a limit left no room for the calls; they were answered with `not_run`


@dataclasses.dataclass(frozen=True)
class ToolRound:
    turn: int
    kind: RoundKind


class Transcript:
    """The records of one run. `messages` starts as the client's conversation and grows with each turn."""

    def __init__(self, messages: Sequence[dict]):
        self.messages: list[dict] = [dict(m) for m in messages]
        self.turns: list[EngineTurn] = []
        self.calls: list[CallRecord] = []
        self.rounds: list[ToolRound] = []

    def add_turn(self, turn: EngineTurn) -> None:
        self.turns.append(turn)

    def add_answer(self, text: str) -> None:
        self.messages.append({"role": "assistant", "content": text.strip()})

    def add_tool_calls(self, text: str, calls: Sequence[tuple[str, str, Any]]) -> None:
        """The assistant message of a turn that called tools: `calls` are (call id, name, arguments) of readable calls."""
        message: dict = {"role": "assistant", "content": text}
        if calls:
            message["tool_calls"] = [
                {"id": call_id, "type": "function",
                 "function": {"name": name, "arguments": canonical_arguments(arguments)}}
                for call_id, name, arguments in calls]
        self.messages.append(message)

    def add_tool_results(self, results: Sequence[tuple[str, str, str]], note: Optional[str]) -> None:
        """Tool messages answering the assistant's calls: (call id, name, content); then the note, if any."""
        for call_id, name, content in results:
            self.messages.append({"role": "tool", "tool_call_id": call_id, "name": name, "content": content})
        if note:
            self.messages.append({"role": "system", "content": note})

    def add_round(self, turn: int, kind: RoundKind, calls: Sequence[CallRecord]) -> None:
        self.rounds.append(ToolRound(turn, kind))
        self.calls.extend(calls)

    @property
    def iterations(self) -> int:
        return sum(r.kind is RoundKind.TOOLS for r in self.rounds)

    @property
    def repairs_in_a_row(self) -> int:
        count = 0
        for round_ in reversed(self.rounds):
            if round_.kind is not RoundKind.REPAIR:
                break
            count += 1
        return count

    def usage(self) -> dict:
        last = self.turns[-1] if self.turns else None
        return {
            "prompt_tokens": sum(t.prompt_tokens for t in self.turns),
            "completion_tokens": sum(len(t.ids) for t in self.turns),
            "engine_turns": len(self.turns),
            "tool_calls": len(self.calls),
            "iterations": self.iterations,
            "repair_turns": sum(r.kind is RoundKind.REPAIR for r in self.rounds),
            "reused_prompt_tokens": sum(t.reused_prompt_tokens for t in self.turns),
            "context_tokens": last.prompt_tokens + len(last.ids) if last else 0,
        }


@dataclasses.dataclass(frozen=True)
class RunResult:
    """The outcome of a run: the final answer and why it ended, with the transcript's records."""

    text: str
    finish_reason: str
    detail: str
    usage: dict
    calls: tuple[CallRecord, ...]
    messages: tuple[dict, ...]
    turns: tuple[EngineTurn, ...]

    def trace(self) -> dict:
        return {
            "finish_reason": self.finish_reason,
            "detail": self.detail,
            "tool_calls": [dataclasses.asdict(c) for c in self.calls],
            "turns": [t.trace() for t in self.turns],
            "messages": list(self.messages),
        }


def error_payload(message: str) -> str:
    return json.dumps({"error": message}, ensure_ascii=False)


def is_readable(status: ToolStatus) -> bool:
    """A call whose JSON could be read appears in the history as a tool call (a malformed one cannot)."""
    return status is not ToolStatus.MALFORMED
