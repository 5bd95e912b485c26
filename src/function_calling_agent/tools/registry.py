"""Define tools with `@tool`, load the tool modules a server offers, and hold them in an immutable `ToolRegistry`.

A tool is a typed function with a Google-style docstring. Its JSON schema is generated from the signature and docstring
(`transformers.utils.get_json_schema`) when the module is imported, and any problem fails loading right there.

The export rule: a tool module offers exactly the functions it defines at module level with `@tool`. Tools it imports
from elsewhere are not offered again, so a module can reuse another module's tools without duplicating them.
"""

from __future__ import annotations

import enum
import importlib
import importlib.machinery
import importlib.util
import inspect
import json
import re
import sys
import types
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Callable, Optional

from .spec import ToolDefinitionError, ToolSpec

_SPEC_ATTRIBUTE = "__tool_spec__"
_MODULE_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


class ToolError(Exception):
    """Raised by a tool for a failure the model should hear about; the message goes to the model as the result."""


class ToolNotOfferedError(ValueError):
    """A request asked for tools this server does not offer."""

    def __init__(self, unknown: list[str], offered: tuple[str, ...]):
        self.unknown = unknown
        self.offered = offered
        super().__init__(
            f"tools not offered by this server: {', '.join(unknown)}; offered tools: {', '.join(offered) or '(none)'}"
        )


def tool(fn: Optional[Callable[..., Any]] = None, *, name: Optional[str] = None, timeout_s: Optional[float] = None):
    """Mark a module-level function as a tool: `@tool` or `@tool(name="...", timeout_s=5)`.

    The function is returned unchanged (it stays directly callable); its `ToolSpec` is built now and attached to it.
    `timeout_s` None means the server's default tool timeout.
    """
    if fn is not None and not callable(fn):
        raise TypeError("use @tool or @tool(name=..., timeout_s=...) (keyword arguments only)")

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        setattr(function, _SPEC_ATTRIBUTE, build_tool_spec(function, name=name, timeout_s=timeout_s))
        return function

    return decorate(fn) if fn is not None else decorate


def spec_of(function: Callable[..., Any]) -> ToolSpec:
    """The `ToolSpec` of a function decorated with `@tool`."""
    spec = getattr(function, _SPEC_ATTRIBUTE, None)
    if not isinstance(spec, ToolSpec):
        raise ToolDefinitionError(f"{_describe(function)} is not decorated with @tool")
    return spec


def build_tool_spec(
    function: Callable[..., Any], *, name: Optional[str] = None, timeout_s: Optional[float] = None
) -> ToolSpec:
    """Build and check a function's `ToolSpec`; raises `ToolDefinitionError` naming the function and the problem."""
    where = _describe(function)
    if not inspect.isfunction(function):
        raise ToolDefinitionError(f"{where}: a tool must be a plain (or async) function, got {type(function).__name__}")
    if timeout_s is not None and (isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float))):
        raise ToolDefinitionError(f"{where}: timeout_s must be a number of seconds, got {timeout_s!r}")
    signature = inspect.signature(function)
    for parameter in signature.parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD, parameter.POSITIONAL_ONLY):
            raise ToolDefinitionError(
                f"{where}: parameter {parameter.name!r} is {parameter.kind.description}; tools are called with named "
                "arguments only"
            )
    _reject_lossy_hints(function, where)

    from transformers.utils import get_json_schema  # imported here: transformers takes about a second to import

    try:
        schema = get_json_schema(function)["function"]
    except Exception as exc:  # DocstringParsingException, TypeHintParsingException, and parser bugs
        raise ToolDefinitionError(f"{where}: cannot build its JSON schema: {exc}") from exc
    description = (schema.get("description") or "").strip()
    if not description:
        raise ToolDefinitionError(f"{where}: its docstring needs a description before the Args: section")
    parameters = schema.get("parameters") or {"type": "object", "properties": {}}
    for parameter_name, parameter_schema in parameters.get("properties", {}).items():
        if "prefixItems" in parameter_schema:
            raise ToolDefinitionError(f"{where}: parameter {parameter_name!r}: use list[...] instead of a tuple hint")
        default = signature.parameters[parameter_name].default
        if default is not inspect.Parameter.empty and default is not None and _is_json(default):
            parameter_schema["default"] = default
    try:
        json.dumps(parameters)
        return ToolSpec(
            name=name if name is not None else function.__name__,
            description=description,
            parameters=parameters,
            fn=function,
            timeout_s=float(timeout_s) if timeout_s is not None else None,
        )
    except (ToolDefinitionError, TypeError, ValueError) as exc:
        raise ToolDefinitionError(f"{where}: {exc}") from exc


def _reject_lossy_hints(function: Callable[..., Any], where: str) -> None:
    # Arguments are validated against the JSON schema, so the tool receives JSON values: an Enum member or a tuple
    # would arrive as a plain str or list. Refuse those hints rather than call the tool with the wrong type.
    try:
        hints = typing.get_type_hints(function)
    except Exception as exc:
        raise ToolDefinitionError(f"{where}: cannot resolve its type hints: {exc}") from exc
    hints.pop("return", None)

    def walk(parameter: str, hint: Any) -> None:
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            raise ToolDefinitionError(
                f"{where}: parameter {parameter!r}: Enum hints are not supported, use typing.Literal[...] instead"
            )
        for argument in typing.get_args(hint):
            walk(parameter, argument)

    for parameter, hint in hints.items():
        walk(parameter, hint)


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _describe(function: Any) -> str:
    module = getattr(function, "__module__", None) or "?"
    qualname = getattr(function, "__qualname__", None) or repr(function)
    return f"tool function {module}.{qualname}"


def module_tools(module: types.ModuleType) -> list[ToolSpec]:
    """The tools `module` exports: the `@tool` functions it defines at module level, in definition order."""
    specs: list[ToolSpec] = []
    seen: set[int] = set()
    for value in list(vars(module).values()):
        if not inspect.isfunction(value) or value.__module__ != module.__name__ or id(value) in seen:
            continue
        spec = getattr(value, _SPEC_ATTRIBUTE, None)
        if isinstance(spec, ToolSpec):
            seen.add(id(value))
            specs.append(spec)
    return specs


def load_tool_modules(module_names: Iterable[str], search_path: Sequence[str] = ()) -> ToolRegistry:
    """Import the listed tool modules (dotted names) and collect their tools.

    A module whose top-level package is not imported yet is looked up first in the `search_path` directories (the
    `tool_path` parameter), then in the Python environment. Fails with `ToolDefinitionError` on a bad or missing
    module, a module exporting no tools, a tool whose schema cannot be built, or the same tool name exported twice.
    An empty list gives an empty registry (a server without tools).
    """
    if isinstance(module_names, str) or isinstance(search_path, str):
        raise TypeError("module_names and search_path must be lists, not one string")
    specs: list[ToolSpec] = []
    exported_by: dict[str, str] = {}
    loaded: set[str] = set()
    for raw_name in module_names:
        module_name = raw_name.strip() if isinstance(raw_name, str) else raw_name
        if not isinstance(module_name, str) or not _MODULE_NAME.match(module_name) or module_name.endswith(".py"):
            raise ToolDefinitionError(
                f"tool module {raw_name!r} is not a dotted Python module name (like 'my_tools' or "
                "'function_calling_agent.tools.finance'): "
                "list modules, not file paths"
            )
        if module_name in loaded:
            raise ToolDefinitionError(f"tool module {module_name!r} is listed twice")
        loaded.add(module_name)
        found = module_tools(_import_tool_module(module_name, tuple(search_path)))
        if not found:
            raise ToolDefinitionError(
                f"tool module {module_name!r} exports no tools: decorate its module-level functions with @tool"
            )
        for spec in found:
            if spec.name in exported_by:
                raise ToolDefinitionError(
                    f"tool {spec.name!r} is exported by both {exported_by[spec.name]!r} and {module_name!r}; "
                    "rename one with @tool(name=...)"
                )
            exported_by[spec.name] = module_name
            specs.append(spec)
    return ToolRegistry(specs)


def _import_tool_module(module_name: str, search_path: tuple[str, ...]) -> types.ModuleType:
    try:
        _load_top_level_from(module_name.split(".")[0], search_path)
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            where = f"in the tool_path {list(search_path)} nor " if search_path else ""
            raise ToolDefinitionError(
                f"tool module {module_name!r} not found {where}in the model's Python environment: put its folder in "
                "the tool_path parameter (./serve.sh --tool-path DIR) or install it"
            ) from exc
        raise ToolDefinitionError(f"tool module {module_name!r} failed to import: {exc}") from exc
    except ToolDefinitionError as exc:
        raise ToolDefinitionError(f"tool module {module_name!r}: {exc}") from exc
    except Exception as exc:
        raise ToolDefinitionError(f"tool module {module_name!r} failed to import: {type(exc).__name__}: {exc}") from exc


def _load_top_level_from(name: str, search_path: tuple[str, ...]) -> None:
    """Imports the top-level module or package `name` from the `search_path` directories, if it is there and not
    imported yet; its submodules then import through the package's own `__path__`. sys.path is left as it is."""
    if not search_path or name in sys.modules:
        return
    spec = importlib.machinery.PathFinder.find_spec(name, list(search_path))
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


class ToolRegistry(Mapping[str, ToolSpec]):
    """The tools a server offers, by name, in a fixed order (module order, then definition order). Immutable."""

    __slots__ = ("_specs",)

    def __init__(self, specs: Iterable[ToolSpec] = ()):
        by_name: dict[str, ToolSpec] = {}
        for spec in specs:
            if not isinstance(spec, ToolSpec):
                raise TypeError(f"ToolRegistry holds ToolSpec objects, got {type(spec).__name__}")
            if spec.name in by_name:
                raise ToolDefinitionError(f"tool name {spec.name!r} is defined twice")
            by_name[spec.name] = spec
        object.__setattr__(self, "_specs", types.MappingProxyType(by_name))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("ToolRegistry is immutable")

    def __getitem__(self, name: str) -> ToolSpec:
        return self._specs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __repr__(self) -> str:
        return f"ToolRegistry({list(self._specs)})"

    def names(self) -> tuple[str, ...]:
        return tuple(self._specs)

    def narrow(self, names: Iterable[str]) -> ToolRegistry:
        """The subset named in `names`, kept in this registry's order; never adds a tool.

        Raises `ToolNotOfferedError` (a ValueError) listing the offered names when a name is not offered.
        """
        if isinstance(names, str):
            raise TypeError("names must be a list of tool names, not one string")
        wanted = list(names)
        unknown = [n for n in dict.fromkeys(wanted) if not isinstance(n, str) or n not in self._specs]
        if unknown:
            raise ToolNotOfferedError([str(n) for n in unknown], self.names())
        keep = set(wanted)
        return ToolRegistry(spec for name, spec in self._specs.items() if name in keep)

    def schemas(self) -> list[dict]:
        """The OpenAI-style `[{"type": "function", "function": {...}}, ...]` list for the chat template's `tools=`."""
        return [spec.openai_schema() for spec in self._specs.values()]
