"""What the agent loop knows about a tool: its schema, how to validate arguments, how to call it."""

from __future__ import annotations

import dataclasses
import enum
import typing
from typing import Any, Callable, Literal, Optional

import pydantic


class ToolDefinitionError(ValueError):
    """A tool cannot be offered: its schema is missing or unsupported. Raised at load time."""


@dataclasses.dataclass(frozen=True)
class ToolSpec:
    """One tool the model may call.

    `parameters` is the OpenAI-style JSON schema of the arguments (an object schema). `fn` is called with keyword
    arguments only, after validation. `timeout_s` None means the server's default tool timeout. `server` is the
    label of the MCP server the tool comes from (None for module tools).
    """

    name: str
    description: str
    parameters: dict
    fn: Callable[..., Any]
    timeout_s: Optional[float] = None
    validator: type[pydantic.BaseModel] = dataclasses.field(default=None, compare=False, repr=False)
    server: Optional[str] = None

    def __post_init__(self):
        if not self.name or not self.name.replace("_", "a").replace("-", "a").isalnum():
            raise ToolDefinitionError(f"tool name {self.name!r} must be letters, digits, '_' or '-'")
        if self.parameters.get("type", "object") != "object":
            raise ToolDefinitionError(f"tool {self.name!r}: parameters schema must be an object schema")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ToolDefinitionError(f"tool {self.name!r}: timeout_s must be > 0, got {self.timeout_s!r}")
        if self.validator is None:
            object.__setattr__(self, "validator", arguments_model(self.name, self.parameters))

    def openai_schema(self) -> dict:
        """The `{"type": "function", "function": {...}}` form that chat templates expect in `tools=`."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    def validate_arguments(self, arguments: dict) -> dict:
        """Returns the keyword arguments to call the tool with; raises `pydantic.ValidationError`."""
        return self.validator.model_validate(arguments).model_dump(exclude_unset=True)


_SCALARS = {"string": str, "integer": int, "number": float, "boolean": bool, "null": type(None)}


def _python_type(schema: dict, where: str) -> Any:
    if not isinstance(schema, dict):
        raise ToolDefinitionError(f"{where}: schema must be an object, got {schema!r}")
    if schema.get("nullable"):
        # OpenAPI-style `nullable`, which transformers' get_json_schema emits for Optional[...] hints.
        rest = {k: v for k, v in schema.items() if k != "nullable"}
        return Optional[_python_type(rest, where)]
    if "enum" in schema:
        values = tuple(schema["enum"])
        if not values:
            raise ToolDefinitionError(f"{where}: empty enum")
        return Literal[values]  # type: ignore[valid-type]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = tuple(_python_type(s, where) for s in schema[key])
            return typing.Union[options]  # type: ignore[return-value]
    kind = schema.get("type")
    if isinstance(kind, list):
        return typing.Union[tuple(_python_type({**schema, "type": k}, where) for k in kind)]  # type: ignore
    if kind in _SCALARS:
        return _SCALARS[kind]
    if kind == "array":
        items = schema.get("items")
        return list[_python_type(items, where + "[]")] if items else list
    if kind == "object":
        if "properties" in schema:
            return arguments_model(where, schema)
        extra = schema.get("additionalProperties")
        return dict[str, _python_type(extra, where + "{}")] if isinstance(extra, dict) else dict
    if kind is None:
        return Any
    raise ToolDefinitionError(f"{where}: unsupported JSON schema type {kind!r}")


def arguments_model(name: str, schema: dict) -> type[pydantic.BaseModel]:
    """A pydantic model that validates arguments against an object JSON schema.

    Unknown arguments are rejected (extra='forbid'), so a model cannot smuggle in parameters the tool does not declare.
    """
    properties = schema.get("properties", {})
    if not isinstance(properties, dict):
        raise ToolDefinitionError(f"tool {name!r}: 'properties' must be an object")
    required = set(schema.get("required", []))
    unknown = required - set(properties)
    if unknown:
        raise ToolDefinitionError(f"tool {name!r}: required parameters {sorted(unknown)} have no schema")
    fields: dict[str, Any] = {}
    for field_name, field_schema in properties.items():
        annotation = _python_type(field_schema, f"{name}.{field_name}")
        if field_name in required:
            fields[field_name] = (annotation, ...)
        else:
            # The default is never validated nor passed on (validate_arguments drops unset fields, so the function's
            # own default applies); an explicit null is accepted only where the schema allows null.
            fields[field_name] = (annotation, field_schema.get("default"))
    safe_name = "".join(c if c.isalnum() else "_" for c in name) + "_Arguments"
    try:
        return pydantic.create_model(safe_name, __config__=pydantic.ConfigDict(extra="forbid"), **fields)
    except Exception as exc:  # pydantic raises several types for bad field names
        raise ToolDefinitionError(f"tool {name!r}: cannot build an argument validator: {exc}") from exc


class ToolStatus(str, enum.Enum):
    """Outcome of one tool call, as reported in traces and metrics."""

    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    INVALID_ARGS = "invalid_args"
    UNKNOWN_TOOL = "unknown_tool"
    MALFORMED = "malformed"
    NOT_RUN = "not_run"
    CLIENT = "client"  # a client tool's call, handed to the client to run
