"""What the scripted engine says on each turn: the JSON script, scenario matching and the per-turn plan.

Plain Python (no Triton, no tokenizer) so the rules are unit-testable; `model.py` only tokenizes and streams.

Script format (JSON):

    {"scenarios": [{"name": "weather", "match": "weather",
                    "turns": ["<tool_call>\\n{...}\\n</tool_call>", "It is {tool_response}."],
                    "emit_end_id": true, "token_latency_ms": 5,
                    "fail_at_turn": 1, "fail_after_tokens": 3, "hang_at_turn": 2}],
     "default_turns": ["Hello."]}

- A scenario is picked when its `match` occurs in the first user turn of the prompt; the first match wins,
  otherwise `default_turns` answer (scenario name "default").
- Turn index = number of `<|im_start|>assistant` in the prompt - 1; turns past the list repeat the last one.
- `{tool_response}` in a turn becomes the stripped body of the prompt's last `<tool_response>` block ("" if none).
- `fail_at_turn` alone fails that turn before any token; `fail_after_tokens` alone fails every turn after that many
  tokens; both together fail turn `fail_at_turn` after `fail_after_tokens` tokens.
- `hang_at_turn` sends nothing on that turn until the request is stopped or cancelled.
- `guided`: what the scenario says on a turn whose request carries a guide (`guided_decoding_guide_type` and
  `guided_decoding_guide`, as TensorRT-LLM takes them); the engine checks it against the guide and fails the request
  when it does not conform, so tests see that a constraint reached the engine and was honoured. Without `guided`, a
  guided turn says its normal text, checked the same way.
- `record_prompt_ids`: the request log's start entries of this scenario carry the prompt's token ids.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional, Sequence

USER_START = "<|im_start|>user\n"
TURN_END = "<|im_end|>"
ASSISTANT_START = "<|im_start|>assistant"
TOOL_RESPONSE_OPEN = "<tool_response>"
TOOL_RESPONSE_CLOSE = "</tool_response>"
TOOL_RESPONSE_SLOT = "{tool_response}"
DEFAULT_SCENARIO = "default"


class ScriptError(ValueError):
    """The script file is not valid; the message says which field to fix."""


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    match: str
    turns: tuple[str, ...]
    emit_end_id: bool = True
    token_latency_ms: Optional[float] = None
    fail_at_turn: Optional[int] = None
    fail_after_tokens: Optional[int] = None
    hang_at_turn: Optional[int] = None
    guided: Optional[str] = None
    record_prompt_ids: bool = False

    def turn_text(self, turn: int) -> str:
        return self.turns[min(turn, len(self.turns) - 1)]

    def fails_after(self, turn: int) -> Optional[int]:
        """Tokens to send before failing this turn, or None if it does not fail."""
        if self.fail_at_turn is None and self.fail_after_tokens is None:
            return None
        if self.fail_at_turn is not None and self.fail_at_turn != turn:
            return None
        return self.fail_after_tokens or 0


@dataclasses.dataclass(frozen=True)
class TurnPlan:
    """Everything the engine needs to answer one request."""

    scenario: str
    turn: int
    text: str
    emit_end_id: bool
    token_latency_ms: Optional[float]  # None: the model's configured latency
    fail_after_tokens: Optional[int]  # None: no failure
    hang: bool
    guided_text: Optional[str] = None  # what to say instead when the request carries a guide
    record_prompt_ids: bool = False


_SCENARIO_FIELDS = {f.name for f in dataclasses.fields(Scenario)}
_OPTIONAL_INT_FIELDS = ("fail_at_turn", "fail_after_tokens", "hang_at_turn")


def _turns(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(t, str) for t in value):
        raise ScriptError(f"{where}: must be a non-empty list of strings")
    return tuple(value)


def _scenario(raw: Any, index: int) -> Scenario:
    where = f"scenarios[{index}]"
    if not isinstance(raw, dict):
        raise ScriptError(f"{where}: must be an object")
    unknown = set(raw) - _SCENARIO_FIELDS
    if unknown:
        raise ScriptError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(_SCENARIO_FIELDS)}")
    for key in ("name", "match"):
        if not isinstance(raw.get(key), str):
            raise ScriptError(f"{where}.{key}: required string")
    if "emit_end_id" in raw and not isinstance(raw["emit_end_id"], bool):
        raise ScriptError(f"{where}.emit_end_id: must be true or false")
    if raw.get("guided") is not None and not isinstance(raw["guided"], str):
        raise ScriptError(f"{where}.guided: must be a string")
    latency = raw.get("token_latency_ms")
    if latency is not None and (isinstance(latency, bool) or not isinstance(latency, (int, float)) or latency < 0):
        raise ScriptError(f"{where}.token_latency_ms: must be a number >= 0")
    for key in _OPTIONAL_INT_FIELDS:
        value = raw.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ScriptError(f"{where}.{key}: must be an integer >= 0")
    return Scenario(
        name=raw["name"],
        match=raw["match"],
        turns=_turns(raw.get("turns"), f"{where}.turns"),
        emit_end_id=raw.get("emit_end_id", True),
        token_latency_ms=latency,
        fail_at_turn=raw.get("fail_at_turn"),
        fail_after_tokens=raw.get("fail_after_tokens"),
        hang_at_turn=raw.get("hang_at_turn"),
        guided=raw.get("guided"),
        record_prompt_ids=bool(raw.get("record_prompt_ids", False)),
    )


def first_user_text(prompt: str) -> str:
    start = prompt.find(USER_START)
    if start < 0:
        return ""
    start += len(USER_START)
    end = prompt.find(TURN_END, start)
    return prompt[start:] if end < 0 else prompt[start:end]


def turn_index(prompt: str) -> int:
    return max(prompt.count(ASSISTANT_START) - 1, 0)


def last_tool_response(prompt: str) -> str:
    start = prompt.rfind(TOOL_RESPONSE_OPEN)
    if start < 0:
        return ""
    start += len(TOOL_RESPONSE_OPEN)
    end = prompt.find(TOOL_RESPONSE_CLOSE, start)
    return (prompt[start:] if end < 0 else prompt[start:end]).strip()


@dataclasses.dataclass(frozen=True)
class CompletionScript:
    scenarios: tuple[Scenario, ...]
    default_turns: tuple[str, ...]

    @classmethod
    def from_dict(cls, raw: Any) -> "CompletionScript":
        if not isinstance(raw, dict):
            raise ScriptError("script: must be a JSON object")
        unknown = set(raw) - {"scenarios", "default_turns"}
        if unknown:
            raise ScriptError(f"script: unknown field(s) {sorted(unknown)}; allowed: ['default_turns', 'scenarios']")
        scenarios = raw.get("scenarios", [])
        if not isinstance(scenarios, list):
            raise ScriptError("script.scenarios: must be a list")
        parsed = tuple(_scenario(s, i) for i, s in enumerate(scenarios))
        names = [s.name for s in parsed]
        if len(set(names)) != len(names) or DEFAULT_SCENARIO in names:
            raise ScriptError(f"script.scenarios: names must be unique and not {DEFAULT_SCENARIO!r}, got {names}")
        return cls(scenarios=parsed, default_turns=_turns(raw.get("default_turns"), "script.default_turns"))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CompletionScript":
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ScriptError(f"cannot read script {os.fspath(path)!r}: {e}") from e
        return cls.from_dict(raw)

    def scenario_for(self, prompt: str) -> Scenario:
        user_text = first_user_text(prompt)
        for scenario in self.scenarios:
            if scenario.match in user_text:
                return scenario
        return Scenario(name=DEFAULT_SCENARIO, match="", turns=self.default_turns)

    def plan(self, prompt: str) -> TurnPlan:
        scenario = self.scenario_for(prompt)
        turn = turn_index(prompt)
        text = scenario.turn_text(turn)
        if TOOL_RESPONSE_SLOT in text:
            text = text.replace(TOOL_RESPONSE_SLOT, last_tool_response(prompt))
        return TurnPlan(
            scenario=scenario.name,
            turn=turn,
            text=text,
            emit_end_id=scenario.emit_end_id,
            token_latency_ms=scenario.token_latency_ms,
            fail_after_tokens=scenario.fails_after(turn),
            hang=scenario.hang_at_turn == turn,
            guided_text=scenario.guided,
            record_prompt_ids=scenario.record_prompt_ids,
        )


def schedule_tokens(
    completion_ids: Sequence[int], end_id: Optional[int], emit_end_id: bool, max_tokens: int
) -> tuple[list[int], bool]:
    """The ids to send, honouring `request_output_len`; True when the limit cut the completion short."""
    ids = list(completion_ids)
    if emit_end_id and end_id is not None:
        ids.append(end_id)
    limit = max(max_tokens, 0)
    return ids[:limit], len(ids) > limit


class ScriptFile:
    """The script at `path`, re-read when the file changes so a running server can be re-scripted by tests."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._stamp: Optional[tuple[int, int]] = None
        self._script: Optional[CompletionScript] = None
        self.get()

    def get(self) -> CompletionScript:
        try:
            st = os.stat(self.path)
        except OSError as e:
            raise ScriptError(f"cannot read script {self.path!r}: {e}") from e
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp or self._script is None:
            self._script = CompletionScript.load(self.path)
            self._stamp = stamp
        return self._script


def guide_violation(guide_type: str, guide: str, text: str) -> Optional[str]:
    """Why `text` does not conform to a TensorRT-LLM guide (json, json_schema, regex; ebnf_grammar is not checked
    here), or None when it does."""
    import re

    if guide_type == "regex":
        return None if re.fullmatch(guide, text) else f"{text[:80]!r} does not match the regex {guide[:80]!r}"
    if guide_type not in ("json", "json_schema"):
        return f"guide type {guide_type!r} is not supported by the scripted engine"
    try:
        value = json.loads(text)
    except ValueError as exc:
        return f"{text[:80]!r} is not JSON ({exc})"
    if guide_type == "json_schema":
        import jsonschema

        try:
            jsonschema.validate(value, json.loads(guide))
        except (ValueError, jsonschema.ValidationError, jsonschema.SchemaError) as exc:
            return f"{text[:80]!r} does not conform to the schema: {getattr(exc, 'message', exc)}"
    return None
