"""Strict-JSON copies of values and JSON-text-or-mapping parsing, shared by core, hooks, operators.

Import-light on purpose (no numpy/pandas import): numpy and pandas values are recognised by
duck typing, so operators and hooks can use it without pulling the data stack in.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
from collections.abc import Mapping
from typing import Any

from airflow_mlops.core.errors import ConfigError

__all__ = ["json_safe", "parse_json_mapping"]

MAX_TEXT_CHARS = 200
MAX_LIST_ITEMS = 10
_MAX_DEPTH = 4
_MISSING_TYPES = frozenset({"NAType", "NaTType"})  # pandas' pd.NA and pd.NaT


def _truncate_text(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def json_safe(value: Any, *, bounded: bool = False, _depth: int = 0) -> Any:
    """A strict-JSON copy of ``value``: passes ``json.dumps(..., allow_nan=False)``.

    NaN and ±inf become ``None`` (XCom and JSON artifacts carry strict JSON), numpy scalars
    and arrays become Python values, datetimes ISO text, pandas NA/NaT ``None``, keys text,
    anything else ``str``. With ``bounded=True`` strings are cut to MAX_TEXT_CHARS, lists to
    MAX_LIST_ITEMS and nesting to a few levels, so one huge value cannot blow up an XCom.
    """
    if bounded and _depth > _MAX_DEPTH:
        return _truncate_text(str(value))
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return _truncate_text(value) if bounded else value
    if type(value).__name__ in _MISSING_TYPES:  # before datetime: pd.NaT is a datetime
        return None
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return json_safe(float(value))
    if isinstance(value, Mapping):
        return _safe_mapping(value, bounded, _depth)
    if isinstance(value, list | tuple | set | frozenset):
        return _safe_sequence(list(value), bounded, _depth)
    if _is_numpy_like(value):  # numpy scalar (.item) or array / pandas Index (.tolist)
        plain = value.item() if getattr(value, "ndim", 1) == 0 else value.tolist()
        return json_safe(plain, bounded=bounded, _depth=_depth)
    if isinstance(value, bytes):
        return _truncate_text(repr(value))
    text = str(value)
    return _truncate_text(text) if bounded else text


def _is_numpy_like(value: Any) -> bool:
    return type(value).__module__.split(".")[0] in {"numpy", "pandas"} and (
        callable(getattr(value, "item", None)) or callable(getattr(value, "tolist", None))
    )


def _safe_mapping(value: Mapping, bounded: bool, depth: int) -> dict[str, Any]:
    items = list(value.items())
    limit = MAX_LIST_ITEMS * 5
    out = {
        (_truncate_text(str(k)) if bounded else str(k)): json_safe(
            v, bounded=bounded, _depth=depth + 1
        )
        for k, v in (items[:limit] if bounded else items)
    }
    if bounded and len(items) > limit:
        out["…"] = f"{len(items) - limit} more keys"
    return out


def _safe_sequence(seq: list[Any], bounded: bool, depth: int) -> list[Any]:
    if bounded and len(seq) > MAX_LIST_ITEMS:
        kept = [json_safe(v, bounded=True, _depth=depth + 1) for v in seq[:MAX_LIST_ITEMS]]
        return [*kept, f"… ({len(seq) - MAX_LIST_ITEMS} more)"]
    return [json_safe(v, bounded=bounded, _depth=depth + 1) for v in seq]


def parse_json_mapping(
    value: Any,
    field: str,
    *,
    bad_json: str = "{field} is not valid JSON: {error}",
    not_mapping: str = "{field} must be a mapping, got {type}",
) -> dict[str, Any]:
    """``value`` (a mapping or JSON object text) as a dict; ConfigError naming ``field``.

    ``bad_json``/``not_mapping`` are the caller's message templates (``{field}``, ``{error}``,
    ``{type}``, ``{value}`` are filled in), so each caller keeps its wording.
    """
    if isinstance(value, str | bytes):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ConfigError(bad_json.format(field=field, error=err)) from err
    if not isinstance(value, Mapping):
        raise ConfigError(
            not_mapping.format(field=field, type=type(value).__name__, value=repr(value))
        )
    return dict(value)
