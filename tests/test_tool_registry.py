"""Tool definitions (@tool), loading tool modules from configuration, the registry allowlist, result serialization."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import pathlib
import sys
import textwrap
import uuid
from typing import Literal, Optional

import numpy as np
import pandas as pd
import pydantic
import pytest

_REPO = pathlib.Path(__file__).resolve().parents[1]

from function_calling_agent.tools import (
    ToolNotOfferedError,
    ToolRegistry,
    build_tool_spec,
    load_tool_modules,
    spec_of,
    tool,
)
from function_calling_agent.tools.results import ToolResultError, serialize_result
from function_calling_agent.tools.spec import ToolDefinitionError, ToolSpec


@tool
def book_flight(origin: str, destination: str, seats: int = 1, cabin: Literal["economy", "business"] = "economy",
                note: Optional[str] = None) -> dict:
    """Book a flight.

    Args:
        origin: IATA code of the departure airport.
        destination: IATA code of the arrival airport.
        seats: Number of seats.
        cabin: Cabin class.
        note: Free text for the airline.
    """
    return {"origin": origin, "destination": destination, "seats": seats, "cabin": cabin, "note": note}


def test_schema_comes_from_signature_and_docstring():
    spec = spec_of(book_flight)
    assert spec.name == "book_flight" and spec.description == "Book a flight." and spec.timeout_s is None
    assert spec.parameters == {
        "type": "object",
        "properties": {
            "origin": {"type": "string", "description": "IATA code of the departure airport."},
            "destination": {"type": "string", "description": "IATA code of the arrival airport."},
            "seats": {"type": "integer", "description": "Number of seats.", "default": 1},
            "cabin": {"type": "string", "enum": ["economy", "business"], "description": "Cabin class.",
                      "default": "economy"},
            "note": {"type": "string", "nullable": True, "description": "Free text for the airline."},
        },
        "required": ["origin", "destination"],
    }
    assert spec.openai_schema()["function"]["name"] == "book_flight"


def test_decorated_function_stays_callable_and_is_the_spec_fn():
    assert book_flight("CDG", "NRT")["seats"] == 1
    assert spec_of(book_flight).fn is book_flight


def test_tool_options_name_and_timeout():
    @tool(name="lookup-v2", timeout_s=5)
    def lookup(key: str) -> str:
        """Look a key up.

        Args:
            key: The key.
        """
        return key

    spec = spec_of(lookup)
    assert (spec.name, spec.timeout_s, spec.fn) == ("lookup-v2", 5.0, lookup)


def test_async_tool_is_allowed():
    @tool
    async def ping(host: str) -> str:
        """Ping a host.

        Args:
            host: Host name.
        """
        return host

    assert spec_of(ping).fn is ping and spec_of(ping).parameters["required"] == ["host"]


def _no_docstring(x: str) -> str:
    return x


def _undocumented_arg(x: str, y: int) -> str:
    """Does things.

    Args:
        x: The x.
    """
    return x


def _untyped(x) -> str:
    """Does things.

    Args:
        x: The x.
    """
    return x


class _Custom:
    pass


def _custom_type(x: _Custom) -> str:
    """Does things.

    Args:
        x: The x.
    """
    return ""


class _Color(enum.Enum):
    RED = "red"


def _enum_type(color: _Color) -> str:
    """Does things.

    Args:
        color: The color.
    """
    return ""


def _var_args(*names: str) -> str:
    """Does things.

    Args:
        names: The names.
    """
    return ""


@pytest.mark.parametrize("function, problem", [
    (_no_docstring, "no docstring"),
    (_undocumented_arg, "no description for the argument 'y'"),
    (_untyped, "missing a type hint"),
    (_custom_type, "Couldn't convert the type hint"),
    (_enum_type, "use typing.Literal"),
    (_var_args, "called with named arguments only"),
])
def test_unbuildable_tool_fails_at_definition_naming_function_and_problem(function, problem):
    with pytest.raises(ToolDefinitionError) as caught:
        tool(function)
    message = str(caught.value)
    print(message)
    assert function.__qualname__ in message and problem in message


def test_bad_tool_options_fail_at_definition():
    with pytest.raises(ToolDefinitionError, match="must be letters"):
        build_tool_spec(book_flight, name="book flight")
    with pytest.raises(ToolDefinitionError, match="timeout_s must be > 0"):
        build_tool_spec(book_flight, timeout_s=0)
    with pytest.raises(TypeError, match="keyword arguments only"):
        tool("book_flight")


@pytest.mark.parametrize("arguments, field", [
    ({"destination": "NRT"}, "origin"),  # missing required
    ({"origin": "CDG", "destination": "NRT", "seats": "two"}, "seats"),  # wrong type
    ({"origin": "CDG", "destination": "NRT", "cabin": "first"}, "cabin"),  # outside the enum
    ({"origin": "CDG", "destination": "NRT", "cabin": None}, "cabin"),  # null for a non-Optional parameter
    ({"origin": "CDG", "destination": "NRT", "meal": "veg"}, "meal"),  # not a parameter
])
def test_validation_errors_name_the_field(arguments, field):
    with pytest.raises(pydantic.ValidationError) as caught:
        spec_of(book_flight).validate_arguments(arguments)
    assert [error["loc"][0] for error in caught.value.errors()] == [field]


def test_validated_arguments_are_passed_by_keyword():
    spec = spec_of(book_flight)
    kwargs = spec.validate_arguments({"seats": 2, "destination": "NRT", "origin": "CDG", "note": None})
    assert kwargs == {"seats": 2, "destination": "NRT", "origin": "CDG", "note": None}
    assert spec.fn(**kwargs) == {"origin": "CDG", "destination": "NRT", "seats": 2, "cabin": "economy", "note": None}


@pytest.fixture
def write_module(tmp_path, monkeypatch):
    """Writes a uniquely named module on sys.path; returns its name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    created = []

    def write(source: str, name: Optional[str] = None) -> str:
        name = name or f"user_tools_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        created.append(name)
        return name

    yield write
    for name in created:
        sys.modules.pop(name, None)


_TWO_TOOLS = '''
from function_calling_agent.tools import tool

@tool
def second_tool(x: int) -> int:
    """Doubles.

    Args:
        x: A number.
    """
    return 2 * x

@tool
def first_tool(x: int) -> int:
    """Triples.

    Args:
        x: A number.
    """
    return 3 * x

def not_a_tool(x):
    return x
'''


def test_load_collects_the_tools_a_module_defines_in_definition_order(write_module):
    name = write_module(_TWO_TOOLS)
    registry = load_tool_modules([name])
    assert registry.names() == ("second_tool", "first_tool")
    assert registry["first_tool"].fn(x=2) == 6


def test_imported_tools_are_not_exported_again(write_module):
    base = write_module(_TWO_TOOLS)
    reuser = write_module(f'''
        from function_calling_agent.tools import tool
        from {base} import first_tool

        @tool
        def own_tool() -> str:
            """Has no parameters."""
            return "own"
    ''')
    assert load_tool_modules([reuser]).names() == ("own_tool",)
    assert load_tool_modules([base, reuser]).names() == ("second_tool", "first_tool", "own_tool")


def test_duplicate_tool_names_across_modules_fail_loading(write_module):
    first = write_module(_TWO_TOOLS)
    second = write_module(_TWO_TOOLS)
    with pytest.raises(ToolDefinitionError, match=f"'second_tool' is exported by both '{first}' and '{second}'"):
        load_tool_modules([first, second])


def test_module_without_tools_fails_loading(write_module):
    name = write_module("def helper(x):\n    return x\n")
    with pytest.raises(ToolDefinitionError, match=f"tool module '{name}' exports no tools"):
        load_tool_modules([name])


def test_tool_without_docstring_fails_loading_naming_module_and_function(write_module):
    name = write_module('''
        from function_calling_agent.tools import tool

        @tool
        def undocumented(x: int) -> int:
            return x
    ''')
    with pytest.raises(ToolDefinitionError) as caught:
        load_tool_modules([name])
    assert f"tool module '{name}'" in str(caught.value) and f"{name}.undocumented" in str(caught.value)
    assert "no docstring" in str(caught.value)


def test_bad_module_lists_fail_with_clear_errors(write_module):
    with pytest.raises(ToolDefinitionError, match="'no_such_tools_module' not found in the model's Python environment: put its folder in the tool_path"):
        load_tool_modules(["no_such_tools_module"])
    with pytest.raises(ToolDefinitionError, match="not a dotted Python module name"):
        load_tool_modules(["my_tools.py"])
    with pytest.raises(ToolDefinitionError, match="not a dotted Python module name"):
        load_tool_modules(["tools/finance"])
    broken = write_module("import no_such_dep\n")
    with pytest.raises(ToolDefinitionError, match=f"'{broken}' failed to import: No module named 'no_such_dep"):
        load_tool_modules([broken])
    name = write_module(_TWO_TOOLS)
    with pytest.raises(ToolDefinitionError, match="listed twice"):
        load_tool_modules([name, f" {name} "])
    with pytest.raises(TypeError):
        load_tool_modules(name)
    assert len(load_tool_modules([])) == 0


def test_example_user_module_loads_by_dotted_name(monkeypatch):
    monkeypatch.syspath_prepend(str(_REPO / "examples" / "custom_tools"))
    registry = load_tool_modules(["function_calling_agent.tools.finance", "my_weather_tools"])
    assert registry.names()[-2:] == ("get_example_weather", "convert_temperature")
    weather = registry["get_example_weather"]
    assert weather.timeout_s == 2.0
    assert weather.parameters["properties"]["unit"]["enum"] == ["celsius", "fahrenheit"]
    result = weather.fn(**weather.validate_arguments({"city": "Paris", "unit": "fahrenheit"}))
    assert result["temperature"] == 64.4 and result["note"] == "example data, not a real forecast"
    convert = registry["convert_temperature"]
    assert convert.fn(**convert.validate_arguments({"value": 100, "to_unit": "fahrenheit"})) == {
        "value": 212.0, "unit": "fahrenheit"}


@pytest.fixture
def registry(write_module):
    third = write_module('''
        from function_calling_agent.tools import tool

        @tool
        def third_tool() -> str:
            """Says hi."""
            return "hi"
    ''')
    return load_tool_modules([write_module(_TWO_TOOLS), third])


def test_narrow_keeps_registry_order_and_never_widens(registry):
    narrowed = registry.narrow(["third_tool", "second_tool", "third_tool"])
    assert narrowed.names() == ("second_tool", "third_tool")
    assert narrowed["second_tool"] is registry["second_tool"]
    with pytest.raises(ToolNotOfferedError) as caught:
        narrowed.narrow(["first_tool"])
    assert isinstance(caught.value, ValueError)
    assert str(caught.value) == "tools not offered by this server: first_tool; offered tools: second_tool, third_tool"
    assert registry.narrow([]).names() == ()


def test_narrow_with_unknown_names_lists_the_offered_ones(registry):
    with pytest.raises(ValueError, match=r"not offered by this server: rm_rf, eval; offered tools: "
                                         r"second_tool, first_tool, third_tool"):
        registry.narrow(["first_tool", "rm_rf", "eval"])
    with pytest.raises(TypeError):
        registry.narrow("first_tool")


def test_registry_is_immutable_and_lists_schemas(registry):
    with pytest.raises(TypeError):
        registry["evil"] = registry["first_tool"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        registry._specs = {}  # type: ignore[misc]
    assert [s["function"]["name"] for s in registry.schemas()] == ["second_tool", "first_tool", "third_tool"]
    assert registry.schemas()[2] == {
        "type": "function",
        "function": {"name": "third_tool", "description": "Says hi.",
                     "parameters": {"type": "object", "properties": {}}},
    }
    spec = registry["first_tool"]
    with pytest.raises(ToolDefinitionError, match="defined twice"):
        ToolRegistry([spec, spec])
    assert isinstance(spec, ToolSpec)


@dataclasses.dataclass
class _Quote:
    symbol: str
    at: datetime.date


class _Model(pydantic.BaseModel):
    name: str
    when: datetime.datetime


def test_serialize_result_converts_common_python_data_types():
    value = {
        "when": datetime.datetime(2025, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
        "day": datetime.date(2025, 1, 2),
        "price": decimal.Decimal("12.50"),
        "count": decimal.Decimal("3"),
        "tags": {"b", "a"},
        "np": [np.int64(3), np.float32(0.5), np.bool_(True), np.array([[1, 2]]), float("nan")],
        "stamp": pd.Timestamp("2025-01-02 09:30", tz="America/New_York"),
        "nat": pd.NaT,
        "quote": _Quote("AAPL", datetime.date(2025, 1, 2)),
        "model": _Model(name="x", when=datetime.datetime(2025, 1, 2)),
        1: "int key",
    }
    assert json.loads(serialize_result(value, 10_000)) == {
        "when": "2025-01-02T03:04:05+00:00",
        "day": "2025-01-02",
        "price": 12.5,
        "count": 3,
        "tags": ["a", "b"],
        "np": [3, 0.5, True, [[1, 2]], None],
        "stamp": "2025-01-02T09:30:00-05:00",
        "nat": None,
        "quote": {"symbol": "AAPL", "at": "2025-01-02"},
        "model": {"name": "x", "when": "2025-01-02T00:00:00"},
        "1": "int key",
    }


def test_serialize_result_converts_pandas_frames_and_series():
    frame = pd.DataFrame({"Close": [1.5, 2.0]}, index=pd.DatetimeIndex(["2025-01-02", "2025-01-03"], name="Date"))
    assert json.loads(serialize_result(frame, 1000)) == [
        {"Date": "2025-01-02T00:00:00", "Close": 1.5}, {"Date": "2025-01-03T00:00:00", "Close": 2.0}]
    assert json.loads(serialize_result(pd.Series({"a": 1, "b": None}), 1000)) == {"a": 1, "b": None}
    assert serialize_result("ok", 100) == '"ok"'


def test_serialize_result_rejects_unserializable_values():
    with pytest.raises(ToolResultError, match="builtins.object, which is not JSON-serializable"):
        serialize_result({"x": object()}, 1000)
    loop: list = []
    loop.append(loop)
    with pytest.raises(ToolResultError, match="nested more than"):
        serialize_result(loop, 1000)
    with pytest.raises(ValueError):
        serialize_result("x", 10)


def test_long_results_are_truncated_to_valid_json_with_a_marker():
    value = [{"title": f'headline "{i}" \u00e9'} for i in range(500)]
    full = serialize_result(value, 1_000_000)
    capped = serialize_result(value, 1000)
    assert len(capped) <= 1000
    text = json.loads(capped)
    assert isinstance(text, str)
    cut = len(full) - (len(text) - len(text[text.index(" ...[truncated: "):]))
    assert text.endswith(f" ...[truncated: {cut} of {len(full)} characters cut]")
    assert full.startswith(text[: text.index(" ...[truncated: ")])


@pytest.mark.parametrize("max_chars", [32, 33, 47, 64, 65, 200])
def test_truncated_results_fit_even_small_budgets(max_chars):
    capped = serialize_result(["xxxxxxxxxx"] * 10_000, max_chars)
    assert len(capped) <= max_chars and isinstance(json.loads(capped), str) and "cut]" in capped
