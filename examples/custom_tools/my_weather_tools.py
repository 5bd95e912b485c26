"""My weather tools: the worked example of docs/tools.md. The weather is MADE UP: a fixed table, no network."""

from typing import Literal

from function_calling_agent.tools import ToolError, tool

# Fixed sample data for the example; a real module would call a weather service here.
_EXAMPLE_WEATHER_C = {
    "paris": (18.0, "light rain"),
    "tokyo": (24.5, "sunny"),
    "new york": (21.0, "cloudy"),
}


@tool(timeout_s=2)
def get_example_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> dict:
    """Get the (made-up, example) current weather of a city.

    Args:
        city: City name, e.g. Paris.
        unit: Temperature unit of the answer.
    """
    entry = _EXAMPLE_WEATHER_C.get(city.strip().lower())
    if entry is None:
        raise ToolError(f"no example weather for {city!r}; known cities: {', '.join(sorted(_EXAMPLE_WEATHER_C))}")
    celsius, conditions = entry
    temperature = celsius if unit == "celsius" else celsius * 9 / 5 + 32
    return {"city": city, "temperature": round(temperature, 1), "unit": unit, "conditions": conditions,
            "note": "example data, not a real forecast"}


@tool(name="convert_temperature")
def convert(value: float, to_unit: Literal["celsius", "fahrenheit"]) -> dict:
    """Convert a temperature between Celsius and Fahrenheit.

    Args:
        value: The temperature to convert, in the other unit.
        to_unit: The unit to convert to.
    """
    converted = (value - 32) * 5 / 9 if to_unit == "celsius" else value * 9 / 5 + 32
    return {"value": round(converted, 2), "unit": to_unit}
