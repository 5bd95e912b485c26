"""MCP tools as `ToolSpec`s: arguments checked against the server's JSON Schema, results turned into tool results.

MCP input schemas are arbitrary JSON Schema (`$defs`/`$ref`, `allOf`, `patternProperties`, ...), which the pydantic
builder of module tools cannot represent, so they are validated with `jsonschema` (the draft the schema names, 2020-12
by default as MCP specifies). Failures are raised as `pydantic.ValidationError`, the contract of
`ToolSpec.validate_arguments`, so the run reports them to the model exactly like module tools' invalid arguments.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any, Optional

import pydantic_core

from ..registry import ToolError
from ..spec import ToolDefinitionError, ToolSpec

_MAX_ERRORS = 8
_MAX_INSTANCE_CHARS = 120


@dataclasses.dataclass(frozen=True)
class McpToolSpec(ToolSpec):
    """A tool of the MCP server `server`, offered as `name` (its prefix + `remote_name`)."""

    remote_name: str = ""
    schema_validator: Any = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if not self.name or not self.name.replace("_", "a").replace("-", "a").isalnum():
            raise ToolDefinitionError(
                f"tool {self.name!r}: offered tool names must be letters, digits, '_' or '-'; leave it out of "
                "allowed_tools")
        if not isinstance(self.parameters, dict) or self.parameters.get("type", "object") != "object":
            raise ToolDefinitionError(f"tool {self.name!r}: its inputSchema must be an object schema")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ToolDefinitionError(f"tool {self.name!r}: timeout_s must be > 0, got {self.timeout_s!r}")
        if self.schema_validator is None:
            object.__setattr__(self, "schema_validator", _schema_validator(self.name, self.parameters))

    def validate_arguments(self, arguments: dict) -> dict:
        """The arguments unchanged (JSON values go to the server as they are); raises `pydantic.ValidationError`.

        Beyond the schema, top-level arguments the schema does not declare are refused when it lists `properties`
        and says nothing about others, as for module tools: a model cannot smuggle in parameters.
        """
        import referencing.exceptions

        if not isinstance(arguments, dict):
            raise _validation_error(self.name, [((), "arguments must be a JSON object", arguments)])
        problems = []
        try:
            for error in sorted(self.schema_validator.iter_errors(arguments), key=lambda e: list(map(str, e.path))):
                problems.append((tuple(error.absolute_path), _short(error.message), error.instance))
                if len(problems) >= _MAX_ERRORS:
                    break
        except referencing.exceptions.Unresolvable as exc:
            problems.append(((), f"the tool's input schema cannot be resolved ({exc}); this tool cannot be called",
                             None))
        declared = self.parameters.get("properties")
        if (isinstance(declared, dict) and "additionalProperties" not in self.parameters
                and "patternProperties" not in self.parameters):
            for name in arguments:
                if name not in declared:
                    takes = ", ".join(declared) or "(none)"
                    problems.append(((name,), f"unknown argument; {self.name!r} takes: {takes}", arguments[name]))
        if problems:
            raise _validation_error(self.name, problems)
        return dict(arguments)


def _schema_validator(name: str, schema: dict):
    import jsonschema
    import jsonschema.validators

    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ToolDefinitionError(f"tool {name!r}: its inputSchema is not a valid JSON Schema: {exc.message}") from None
    return cls(schema)


def _short(text: str) -> str:
    return text if len(text) <= 300 else text[:300] + "..."


def _validation_error(name: str, problems) -> pydantic_core.ValidationError:
    line_errors = []
    for loc, message, instance in problems:
        shown = instance
        if isinstance(instance, (dict, list, str)) and len(json.dumps(instance, default=str)) > _MAX_INSTANCE_CHARS:
            shown = json.dumps(instance, default=str)[:_MAX_INSTANCE_CHARS] + "..."
        line_errors.append({
            "type": pydantic_core.PydanticCustomError("json_schema", "{reason}", {"reason": message}),
            "loc": tuple(loc),
            "input": shown,
        })
    return pydantic_core.ValidationError.from_exception_data(f"{name} arguments", line_errors)


def tool_result_value(result, *, label: str, tool: str) -> Any:
    """What a `CallToolResult` gives the model: raises `ToolError` for `isError`, else a JSON-able value.

    Structured content wins when present; a single text block is the result (parsed when it is a JSON object or
    array, so it is not quoted twice); several blocks become a list; images, audio, links and binary resources are
    summarised (type, MIME type, size), never passed on as base64. The run caps the size as for any tool.
    """
    blocks = [_block_value(block) for block in (result.content or [])]
    if result.is_error:
        text = "; ".join(b if isinstance(b, str) else json.dumps(b, ensure_ascii=False) for b in blocks)
        raise ToolError(f"the MCP server {label!r} reported an error from {tool!r}: {text or '(no details)'}")
    if result.structured_content is not None:
        return result.structured_content
    if not blocks:
        return ""
    if len(blocks) == 1:
        return _maybe_json(blocks[0])
    return [_maybe_json(b) for b in blocks]


def _maybe_json(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "{[" and value.strip():
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _size(data: Optional[str]) -> int:
    if not data:
        return 0
    try:
        return len(base64.b64decode(data, validate=False))
    except (ValueError, TypeError):
        return len(data)


def _block_value(block) -> Any:
    kind = getattr(block, "type", None)
    if kind == "text":
        return block.text
    if kind in ("image", "audio"):
        return f"[{kind} content: {getattr(block, 'mime_type', '?')}, {_size(getattr(block, 'data', ''))} bytes]"
    if kind == "resource_link":
        return f"[resource link: {getattr(block, 'name', '')} <{getattr(block, 'uri', '')}>]"
    if kind == "resource":
        resource = block.resource
        text = getattr(resource, "text", None)
        if text is not None:
            return {"resource": str(resource.uri), "text": text}
        return (f"[resource: {resource.uri}, {getattr(resource, 'mime_type', None) or 'binary'}, "
                f"{_size(getattr(resource, 'blob', ''))} bytes]")
    return f"[{kind or 'unknown'} content]"
