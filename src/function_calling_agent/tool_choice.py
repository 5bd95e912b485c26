"""`tool_choice` (OpenAI's `auto`, `none`, `required`, a named function) and the guide that constrains a turn.

How each mode is honoured, on every engine:
  auto      the model decides.
  none      `<tool_call>` is a bad word on every turn (the engine's `bad_words_list`), as on the agent's last turn.
  required  the first turn of the request is one call to any offered tool;
  function  the first turn is one call to that tool. Later turns (after the server's tool results) are `auto`.

A constrained turn is built the way TensorRT-LLM's guided decoding can honour it exactly: the agent ends the prompt
with the call tag itself (`<tool_call>\\n`, written as the template's own markup, so the model sees the token it was
trained on; special tokens are outside any grammar), and the engine generates the call object under a JSON-schema
guide (`guided_decoding_guide_type` "json_schema", XGrammar on TensorRT-LLM, llguidance on the CPU engine), then its
end token. The call object schema is `{"name": <const>, "arguments": <the tool's parameters>}`, one `anyOf` branch
per offered tool.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Optional

from .engine import GuidedDecoding
from .tools.spec import ToolSpec

AUTO, NONE, REQUIRED, FUNCTION = "auto", "none", "required", "function"
MODES = (AUTO, NONE, REQUIRED, FUNCTION)
# TensorRT-LLM's guide type for a JSON schema (triton_backend: json, json_schema, regex, ebnf_grammar).
JSON_SCHEMA = "json_schema"


class ToolChoiceError(ValueError):
    """A tool_choice the client must change (unknown mode, a function that is not offered, nothing to call)."""


@dataclasses.dataclass(frozen=True)
class ToolChoice:
    mode: str = AUTO
    name: Optional[str] = None  # the tool of mode `function`

    @property
    def constrains(self) -> bool:
        """The first turn must be a call (required, or a named function)."""
        return self.mode in (REQUIRED, FUNCTION)

    @property
    def bans_calls(self) -> bool:
        return self.mode == NONE

    def describe(self) -> str:
        return f"function {self.name!r}" if self.mode == FUNCTION else repr(self.mode)

    @classmethod
    def parse(cls, value: Any) -> "ToolChoice":
        """OpenAI's forms: "auto", "none", "required", {"type": "function", "function": {"name": ...}} (a dict or
        its JSON text). Raises ToolChoiceError."""
        if isinstance(value, str):
            text = value.strip()
            if text in (AUTO, NONE, REQUIRED):
                return cls(text)
            if not text.startswith("{"):
                raise ToolChoiceError(f'tool_choice must be "auto", "none", "required" or {{"type": "function", '
                                      f'"function": {{"name": ...}}}}, got {value[:80]!r}')
            try:
                value = json.loads(text)
            except ValueError:
                raise ToolChoiceError("tool_choice is not valid JSON") from None
        if isinstance(value, dict):
            function = value.get("function")
            name = function.get("name") if isinstance(function, dict) else None
            if value.get("type") == "function" and isinstance(name, str) and name:
                return cls(FUNCTION, name)
        raise ToolChoiceError('a named tool_choice must be {"type": "function", "function": {"name": "<tool>"}}')

    def check_offered(self, tools: Mapping[str, ToolSpec]) -> None:
        if self.mode == FUNCTION and self.name not in tools:
            offered = ", ".join(sorted(tools)) or "(none)"
            raise ToolChoiceError(f"tool_choice names {self.name!r}, which is not offered; offered: {offered}")
        if self.mode == REQUIRED and not tools:
            raise ToolChoiceError('tool_choice "required" needs at least one offered tool')

    def guide(self, tools: Mapping[str, ToolSpec]) -> Optional[GuidedDecoding]:
        """The JSON-schema guide of the constrained turn's call object; None when the mode constrains nothing."""
        if not self.constrains:
            return None
        names = [self.name] if self.mode == FUNCTION else sorted(tools)
        branches = [call_object_schema(tools[name]) for name in names]
        schema = branches[0] if len(branches) == 1 else {"anyOf": branches}
        return GuidedDecoding(JSON_SCHEMA, json.dumps(schema, ensure_ascii=False, sort_keys=False))


def call_object_schema(spec: ToolSpec) -> dict:
    """`{"name": <spec.name>, "arguments": <its parameters>}`, name first (grammars keep property order).

    Arguments a schema with `properties` does not declare, and says nothing about, are left out of the guide: the
    agent refuses them anyway (module and MCP tools), so a guided call never spends tokens on them."""
    arguments = standard_schema(spec.parameters)
    if isinstance(arguments.get("properties"), dict) and "additionalProperties" not in arguments \
            and "patternProperties" not in arguments:
        arguments = {**arguments, "additionalProperties": False}
    return {
        "type": "object",
        "properties": {"name": {"const": spec.name}, "arguments": arguments},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def standard_schema(schema: Any) -> Any:
    """The schema in standard JSON Schema: OpenAPI's `nullable: true` (which transformers' get_json_schema writes
    for Optional hints) becomes `anyOf [..., {"type": "null"}]`; grammar compilers do not know `nullable`."""
    if isinstance(schema, list):
        return [standard_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: standard_schema(v) if k != "const" and k != "enum" and k != "default" else v
           for k, v in schema.items() if k != "nullable"}
    if schema.get("nullable"):
        described = {k: out.pop(k) for k in ("description", "title", "default") if k in out}
        return {"anyOf": [out, {"type": "null"}], **described}
    return out
