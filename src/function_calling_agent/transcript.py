"""What happened in one agent run: the conversation in OpenAI form, the engine turns, the tool calls and rounds.

Every record is an immutable value appended by the step that made it; `usage` is computed from the records.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from typing import Any, Optional, Sequence

from .tool_call_parser import canonical_arguments
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
    CLIENT = "client"  # the turn called client tools: the run ended with them (finish_reason tool_calls)


@dataclasses.dataclass(frozen=True)
class ToolRound:
    turn: int
    kind: RoundKind


class Transcript:
    """The records of one run. `messages` starts as the client's conversation and grows with each turn.

    `messages` is the conversation in OpenAI form, for the client to continue it. `prompt_messages` is what the chat
    template renders for the next prompt: the same, except that a turn with calls that could not be read keeps the
    model's own text (there is no OpenAI form for it) and the answers to those calls.
    """

    def __init__(self, messages: Sequence[dict]):
        self.messages: list[dict] = [dict(m) for m in messages]
        self.prompt_messages: list[dict] = [dict(m) for m in messages]
        self.turns: list[EngineTurn] = []
        self.calls: list[CallRecord] = []
        self.rounds: list[ToolRound] = []

    def add_turn(self, turn: EngineTurn) -> None:
        self.turns.append(turn)

    def add_answer(self, text: str, reasoning: str = "") -> None:
        self._add({"role": "assistant", "content": text.strip(), **_reasoning(reasoning)})

    def add_tool_calls(self, text: str, reasoning: str, calls: Sequence[tuple[str, str, Any]],
                       raw_text: Optional[str] = None) -> None:
        """The assistant message of a turn that called tools: `calls` are (call id, name, arguments) of the calls
        that could be read; `raw_text` is the turn's text when some could not (the prompt then keeps it as is)."""
        message: dict = {"role": "assistant", "content": text, **_reasoning(reasoning)}
        if calls:
            message["tool_calls"] = [
                {"id": call_id, "type": "function",
                 "function": {"name": name, "arguments": canonical_arguments(arguments)}}
                for call_id, name, arguments in calls]
        self.messages.append(message)
        # The raw text holds the turn's think block too; the template reads it from there.
        self.prompt_messages.append(message if raw_text is None else {"role": "assistant", "content": raw_text})

    def tool_messages(self, results: Sequence[tuple[str, str, str, bool]], note: Optional[dict]) -> list[dict]:
        """The prompt messages that answer a turn's calls: `results` are (call id, name, content, readable)."""
        out = [{"role": "tool", "tool_call_id": call_id, "name": name, "content": content}
               for call_id, name, content, _ in results]
        return out + ([note] if note else [])

    def add_tool_results(self, results: Sequence[tuple[str, str, str, bool]], note: Optional[dict]) -> None:
        """Tool messages answering the assistant's calls, then the note (a message), if any. In `messages` only the
        readable calls are answered, as an OpenAI history requires."""
        self.prompt_messages += self.tool_messages(results, note)
        self.messages += self.tool_messages([r for r in results if r[3]], note)

    def _add(self, message: dict) -> None:
        self.messages.append(message)
        self.prompt_messages.append(message)

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
            "reasoning_tokens": sum(t.reasoning_tokens for t in self.turns),
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
    reasoning: str = ""  # all turns' reasoning, as streamed in reasoning_output
    tool_calls: tuple[dict, ...] = ()  # the client tool calls to run (OpenAI form), with finish_reason tool_calls

    @property
    def empty_answer(self) -> bool:
        """The model answered nothing after tool results (reported in `detail`, counted in metrics)."""
        return self.detail.startswith(EMPTY_ANSWER)

    def trace(self) -> dict:
        return {
            "finish_reason": self.finish_reason,
            "detail": self.detail,
            "tool_calls": [dataclasses.asdict(c) for c in self.calls],
            "turns": [t.trace() for t in self.turns],
            "messages": list(self.messages),
            **({"pending_tool_calls": list(self.tool_calls)} if self.tool_calls else {}),
        }


EMPTY_ANSWER = "empty answer"


def error_payload(message: str) -> str:
    return json.dumps({"error": message}, ensure_ascii=False)


def _reasoning(text: str) -> dict:
    """`reasoning_content` of an assistant message, where chat templates (Qwen3) read it back, when there is any."""
    return {"reasoning_content": text} if text else {}
