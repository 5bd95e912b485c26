"""Turn what a tool returned into the JSON text that goes back to the model, capped in size."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import math
import pathlib
import sys
import uuid
from typing import Any

import pydantic

# Below this a truncated result could not even hold its (short) marker.
MIN_RESULT_CHARS = 32

_MAX_DEPTH = 64


class ToolResultError(Exception):
    """A tool returned a value that cannot be serialized to JSON (a bug in the tool, not one the model can fix)."""


def serialize_result(value: Any, max_chars: int) -> str:
    """Compact JSON for `value`, at most `max_chars` characters: `cap_json(to_json_text(value), max_chars)`."""
    return cap_json(to_json_text(value), max_chars)


def to_json_text(value: Any) -> str:
    """Compact JSON for `value`; raises `ToolResultError` for a value that has no JSON form.

    Handles JSON types, datetime/date/time/timedelta, Decimal, Enum, UUID, paths, sets, dataclasses, pydantic models,
    numpy scalars/arrays and pandas Timestamp/Series/DataFrame. NaN and infinities become null (JSON has neither).
    """
    return json.dumps(to_jsonable(value), ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def cap_json(text: str, max_chars: int) -> str:
    """`text` (JSON) if it has at most `max_chars` characters; otherwise a JSON string holding its beginning and a
    marker saying how many characters were cut, so the result is always valid JSON of at most `max_chars`."""
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < MIN_RESULT_CHARS:
        raise ValueError(f"max_chars must be an integer >= {MIN_RESULT_CHARS}, got {max_chars!r}")
    if len(text) <= max_chars:
        return text
    return _truncated(text, max_chars)


def _truncated(text: str, max_chars: int) -> str:
    def full_marker(keep: int) -> str:
        return f"{text[:keep]} ...[truncated: {len(text) - keep} of {len(text)} characters cut]"

    def short_marker(keep: int) -> str:
        return f"{text[:keep]}...[{len(text) - keep} cut]"

    marker = full_marker if len(json.dumps(full_marker(0))) <= max_chars else short_marker

    def render(keep: int) -> str:
        return json.dumps(marker(keep), ensure_ascii=False)

    # Escaping makes the rendered length depend on which characters are kept: search the longest prefix that fits.
    low, high = 0, max_chars
    while low < high:
        middle = (low + high + 1) // 2
        if len(render(middle)) <= max_chars:
            low = middle
        else:
            high = middle - 1
    return render(low)


def to_jsonable(value: Any, _depth: int = 0) -> Any:
    """`value` as plain JSON types (dict with str keys, list, str, int, float, bool, None); raises `ToolResultError`."""
    if _depth > _MAX_DEPTH:
        raise ToolResultError(f"tool result is nested more than {_MAX_DEPTH} levels deep (or is circular)")
    depth = _depth + 1
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value, depth)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {_key(k, depth): to_jsonable(v, depth) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, depth) for v in value]
    if isinstance(value, (set, frozenset)):
        items = [to_jsonable(v, depth) for v in value]
        try:
            return sorted(items)
        except TypeError:
            return items
    converted = _convert_pandas(value, depth)
    if converted is not _UNHANDLED:
        return converted
    converted = _convert_numpy(value, depth)
    if converted is not _UNHANDLED:
        return converted
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return None
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (uuid.UUID, pathlib.PurePath)):
        return str(value)
    if isinstance(value, pydantic.BaseModel):
        return to_jsonable(value.model_dump(mode="json"), depth)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable({f.name: getattr(value, f.name) for f in dataclasses.fields(value)}, depth)
    raise ToolResultError(
        f"tool result contains a {type(value).__module__}.{type(value).__qualname__}, which is not JSON-serializable; "
        "return dicts, lists, strings, numbers, booleans, None, dates, dataclasses or pydantic models"
    )


def _key(key: Any, depth: int) -> str:
    if isinstance(key, str):
        return key
    converted = to_jsonable(key, depth)
    return converted if isinstance(converted, str) else json.dumps(converted, ensure_ascii=False)


_UNHANDLED = object()


def _convert_numpy(value: Any, depth: int) -> Any:
    # Only look at numpy if something already imported it: a value cannot be a numpy object otherwise.
    np = sys.modules.get("numpy")
    if np is None:
        return _UNHANDLED
    if isinstance(value, np.datetime64):
        return None if np.isnat(value) else str(np.datetime_as_string(value))
    if isinstance(value, np.timedelta64):
        return None if np.isnat(value) else value / np.timedelta64(1, "s")
    if isinstance(value, np.generic):
        return to_jsonable(value.item(), depth)
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "mM":
            return [to_jsonable(v, depth) for v in value.ravel()]
        return to_jsonable(value.tolist(), depth)
    return _UNHANDLED


def _convert_pandas(value: Any, depth: int) -> Any:
    pd = sys.modules.get("pandas")
    if pd is None:
        return _UNHANDLED
    if value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, pd.Timedelta):
        return value.total_seconds()
    if isinstance(value, pd.DataFrame):
        frame = value if isinstance(value.index, pd.RangeIndex) else value.reset_index()
        # Column labels must be unique to become record keys; stringify to avoid merging 1 and "1".
        columns = [_key(c, depth) for c in frame.columns]
        if len(set(columns)) != len(columns):
            raise ToolResultError(f"DataFrame has duplicate column labels {columns}")
        return [
            {column: to_jsonable(cell, depth) for column, cell in zip(columns, row)}
            for row in frame.itertuples(index=False, name=None)
        ]
    if isinstance(value, pd.Series):
        return {_key(k, depth): to_jsonable(v, depth) for k, v in value.items()}
    if isinstance(value, pd.Index):
        return [to_jsonable(v, depth) for v in value]
    return _UNHANDLED
