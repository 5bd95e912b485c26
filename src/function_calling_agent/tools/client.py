"""Tools the client runs itself (OpenAI's request `tools`): offered to the model next to the server's tools; the
agent never runs them. A turn that calls one ends the run with finish_reason `tool_calls` and the calls in OpenAI
form, after the turn's server calls have run; the client answers with `role: "tool"` messages.

Client schemas are arbitrary JSON Schema, so arguments are checked with `jsonschema` (as for MCP tools); a model's
invalid arguments go back to the model like any other tool's.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Iterable, Mapping

import pydantic_core

from .spec import ToolDefinitionError, ToolSpec

_NAME = re.compile(r"[A-Za-z0-9_\-]{1,64}")
MAX_CLIENT_TOOLS = 128
_MAX_ERRORS = 8


class ToolOfferError(ValueError):
    """The client's tools cannot be offered (a bad definition, or a name the server's tools already use)."""


def _not_run(**_: Any) -> Any:
    raise RuntimeError("client tools are run by the client, never by the agent")


@dataclasses.dataclass(frozen=True)
class ClientToolSpec(ToolSpec):
    """A tool of the request's `client_tools`; `fn` is never called."""

    schema_validator: Any = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if not _NAME.fullmatch(self.name or ""):
            raise ToolDefinitionError(f"client tool name {self.name!r} must be 1-64 letters, digits, '_' or '-'")
        if not isinstance(self.parameters, dict) or self.parameters.get("type", "object") != "object":
            raise ToolDefinitionError(f"client tool {self.name!r}: parameters must be an object JSON Schema")
        if self.schema_validator is None:
            import jsonschema
            import jsonschema.validators

            cls = jsonschema.validators.validator_for(self.parameters, default=jsonschema.Draft202012Validator)
            try:
                cls.check_schema(self.parameters)
            except jsonschema.SchemaError as exc:
                raise ToolDefinitionError(
                    f"client tool {self.name!r}: parameters is not a valid JSON Schema: {exc.message}") from None
            object.__setattr__(self, "schema_validator", cls(self.parameters))

    def validate_arguments(self, arguments: dict) -> dict:
        """The arguments unchanged; raises `pydantic.ValidationError` (the contract of ToolSpec) when they break the
        client's schema."""
        if not isinstance(arguments, dict):
            raise _validation_error(self.name, [((), "arguments must be a JSON object")])
        problems = [(tuple(e.absolute_path), e.message[:300]) for e in self.schema_validator.iter_errors(arguments)]
        if problems:
            raise _validation_error(self.name, problems[:_MAX_ERRORS])
        return dict(arguments)


def _validation_error(name: str, problems) -> pydantic_core.ValidationError:
    return pydantic_core.ValidationError.from_exception_data(f"{name} arguments", [
        {"type": pydantic_core.PydanticCustomError("json_schema", "{reason}", {"reason": message}), "loc": loc,
         "input": None} for loc, message in problems])


def client_tool_specs(tools: Any) -> tuple[ClientToolSpec, ...]:
    """OpenAI's request `tools` (`[{"type": "function", "function": {"name", "description", "parameters"}}]`) as
    specs. Raises ToolOfferError with what to change."""
    if not isinstance(tools, list):
        raise ToolOfferError('client_tools must be a JSON list of {"type": "function", "function": {...}}')
    if len(tools) > MAX_CLIENT_TOOLS:
        raise ToolOfferError(f"at most {MAX_CLIENT_TOOLS} client tools are allowed, got {len(tools)}")
    specs: dict[str, ClientToolSpec] = {}
    for i, tool in enumerate(tools):
        where = f"client_tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" \
                or not isinstance(tool.get("function"), dict):
            raise ToolOfferError(f'{where} must be {{"type": "function", "function": {{"name": ..., '
                                 f'"parameters": {{...}}}}}} (only function tools are supported)')
        function = tool["function"]
        name = function.get("name")
        description = function.get("description") or ""
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(description, str):
            raise ToolOfferError(f"{where}.function.description must be a string")
        if name in specs:
            raise ToolOfferError(f"{where}: the client tool {name!r} is listed twice")
        try:
            specs[name] = ClientToolSpec(name=name, description=description, parameters=parameters, fn=_not_run)
        except ToolDefinitionError as exc:
            raise ToolOfferError(f"{where}: {exc}") from None
    return tuple(specs.values())


def offer_tools(server_tools: Mapping[str, ToolSpec], client_tools: Iterable[ClientToolSpec]) -> dict[str, ToolSpec]:
    """The tools offered to the model: the server's, then the client's. A name used by both is refused."""
    offered = dict(server_tools)
    for spec in client_tools:
        if spec.name in offered:
            raise ToolOfferError(f"the client tool {spec.name!r} has the name of a server tool; rename it (server "
                                 f"tools: {', '.join(sorted(server_tools))})")
        offered[spec.name] = spec
    return offered


def openai_call(call_id: str, name: str, arguments: Any) -> dict:
    """A tool call in OpenAI form: arguments as JSON text."""
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}
