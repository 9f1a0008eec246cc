"""Draft a Great Expectations suite from reference data (``airflow-mlops infer-suite``).

Open-source GX 1.x no longer profiles data, so :func:`infer_suite` writes the usual first
draft from a reference DataFrame: column set and types, completeness, ranges, value sets and
a row-count range. The draft is checked against its own reference with
:func:`airflow_mlops.core.validation.validate_frame` before it is returned, and
:func:`suite_to_json` writes it as a suite file for a human to review.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from airflow_mlops.core.errors import ConfigError
from airflow_mlops.core.jsonsafe import json_safe
from airflow_mlops.core.suite import parse_suite
from airflow_mlops.core.validation import validate_frame
from airflow_mlops.core.validation_summary import failure_lines

__all__ = ["gx_type_list", "infer_suite", "suite_to_json"]

_INT_TYPES = [
    *("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"),
    *("Int8Dtype", "Int16Dtype", "Int32Dtype", "Int64Dtype"),
    *("UInt8Dtype", "UInt16Dtype", "UInt32Dtype", "UInt64Dtype"),
]
_FLOAT_TYPES = ["float16", "float32", "float64", "Float32Dtype", "Float64Dtype"]
_BOOL_TYPES = ["bool", "BooleanDtype"]
_DATETIME_TYPES = ["datetime64[s]", "datetime64[ms]", "datetime64[us]", "datetime64[ns]"]
_STRING_TYPES = ["str", "StringDtype"]


def gx_type_list(series: pd.Series) -> list[str] | None:
    """Type names that GX's ``expect_column_values_to_be_in_type_list`` accepts for this
    column's family (any int width, any float width, ...), or None when GX cannot check it
    by name (timezone-aware datetimes, categoricals, pyarrow strings, mixed objects)."""
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return list(_BOOL_TYPES)
    if pd.api.types.is_integer_dtype(dtype):
        return list(_INT_TYPES)
    if pd.api.types.is_float_dtype(dtype):
        return list(_FLOAT_TYPES)
    if isinstance(dtype, np.dtype) and dtype.kind == "M":
        return list(_DATETIME_TYPES)
    if isinstance(dtype, pd.StringDtype) and dtype.storage == "python":
        return list(_STRING_TYPES)
    if isinstance(dtype, np.dtype) and dtype.kind == "O":
        values = series.dropna()
        if len(values) and values.map(type).eq(str).all():
            return list(_STRING_TYPES)
    return None


def _padded_range(low: float, high: float, margin: float) -> tuple[float, float]:
    span = high - low
    pad = margin * span if span > 0 else margin * max(abs(low), 1.0)
    return low - pad, high + pad


def _round_outward(value: float, *, down: bool, digits: int = 6) -> float:
    """Round to ``digits`` significant digits away from the data, for a readable suite file."""
    if value == 0 or not math.isfinite(value):
        return value
    scale = 10 ** (digits - 1 - math.floor(math.log10(abs(value))))
    rounded = (math.floor if down else math.ceil)(value * scale) / scale
    # Division can land a hair inside the bound; step out by one unit if it did.
    if (down and rounded > value) or (not down and rounded < value):
        rounded += (-1 if down else 1) / scale
    return rounded


def _numeric_range(series: pd.Series, margin: float) -> dict[str, Any] | None:
    if pd.api.types.is_integer_dtype(series.dtype):
        return _integer_range(series, margin)
    values = series.dropna().to_numpy(dtype="float64", na_value=np.nan)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    low, high = _padded_range(float(finite.min()), float(finite.max()), margin)
    bounds: dict[str, Any] = {
        "min_value": _round_outward(low, down=True),
        "max_value": _round_outward(high, down=False),
    }
    # Infinite reference values would fail a finite bound: leave that side open.
    if np.isneginf(values).any():
        bounds["min_value"] = None
    if np.isposinf(values).any():
        bounds["max_value"] = None
    if bounds["min_value"] is None and bounds["max_value"] is None:
        return None
    return bounds


def _integer_range(series: pd.Series, margin: float) -> dict[str, Any]:
    """Python-int arithmetic: float64 would round int64 values beyond 2**53 inwards."""
    values = series.dropna()
    low, high = int(values.min()), int(values.max())
    span = high - low
    pad = math.ceil(margin * (span if span > 0 else max(abs(low), 1)))
    return {"min_value": low - pad, "max_value": high + pad}


def _datetime_range(series: pd.Series, margin: float) -> dict[str, Any]:
    values = series.dropna()
    low, high = values.min(), values.max()
    pad = (high - low) * margin if high > low else pd.Timedelta(days=1) * margin
    # Whole seconds, rounded outwards: GX parses the bounds with microsecond precision.
    return {
        "min_value": (low - pad).floor("s").isoformat(),
        "max_value": (high + pad).ceil("s").isoformat(),
    }


def _value_set(series: pd.Series, max_categories: int) -> list[Any] | None:
    values = series.dropna().unique()
    if len(values) == 0 or len(values) > max_categories:
        return None
    python_values = [v.item() if isinstance(v, np.generic) else v for v in values]
    if all(isinstance(v, bool) for v in python_values) or all(
        isinstance(v, str) for v in python_values
    ):
        return sorted(python_values)
    return None


def _expectation(etype: str, **kwargs: Any) -> dict[str, Any]:
    return {"type": etype, "kwargs": kwargs, "meta": {}}


def _check_bootstrap_options(margin: float, max_categories: int, row_count_margin: float) -> None:
    if not (isinstance(margin, int | float) and math.isfinite(margin) and margin >= 0):
        raise ConfigError(f"margin={margin!r} must be a finite number >= 0.")
    if not isinstance(max_categories, int) or max_categories < 0:
        raise ConfigError(f"max_categories={max_categories!r} must be an integer >= 0.")
    if not (isinstance(row_count_margin, int | float) and row_count_margin >= 0):
        raise ConfigError(f"row_count_margin={row_count_margin!r} must be a number >= 0.")


def infer_suite(
    reference_df: pd.DataFrame,
    *,
    name: str = "inferred_suite",
    margin: float = 0.1,
    max_categories: int = 20,
    row_count_margin: float = 0.5,
) -> dict[str, Any]:
    """Bootstrap a GX 1.x suite (plain JSON dict) from reference data, for a human to edit.

    Open-source GX 1.x no longer profiles data, so this writes the usual first draft:

    * the exact column set, and each column's type family (any int width, any float width);
    * ``not null`` for every column that is complete in the reference;
    * numeric and datetime ranges, widened by ``margin`` * the observed range on each side;
    * value sets for string and boolean columns with at most ``max_categories`` values;
    * a row-count range of ± ``row_count_margin`` * the reference row count.

    The suite validates its own reference data (checked before returning).

    :raises ConfigError: on bad options or a reference without rows or columns.
    """
    # Not at the top, where GX would load before core.validation switches its analytics off.
    from great_expectations import __version__ as gx_version

    _check_bootstrap_options(margin, max_categories, row_count_margin)
    rows, columns = reference_df.shape
    if rows == 0 or columns == 0:
        raise ConfigError(
            f"Cannot infer a suite from reference data with {rows} rows and {columns} columns."
        )
    names = [str(c) for c in reference_df.columns]
    if len(set(names)) != len(names):
        raise ConfigError("Cannot infer a suite: the reference data has duplicate column names.")
    if names != list(reference_df.columns):
        reference_df = reference_df.rename(columns=str)

    expectations = [
        _expectation("expect_table_columns_to_match_set", column_set=names, exact_match=True),
        _expectation(
            "expect_table_row_count_to_be_between",
            min_value=max(0, math.floor(rows * (1 - row_count_margin))),
            max_value=math.ceil(rows * (1 + row_count_margin)),
        ),
    ]
    notes: dict[str, str] = {}
    for column in names:
        expectations.extend(
            _column_expectations(reference_df[column], column, margin, max_categories, notes)
        )

    suite = {
        "name": name,
        "expectations": expectations,
        "meta": {
            "great_expectations_version": gx_version,
            "airflow_mlops": {
                "generated_by": "airflow_mlops.core.suite_inference.infer_suite",
                "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "reference_rows": rows,
                "margin": margin,
                "max_categories": max_categories,
                "row_count_margin": row_count_margin,
                "column_notes": notes,
            },
        },
        "notes": "Bootstrapped from reference data: review every bound before relying on it.",
    }
    _check_inferred_suite(reference_df, suite)
    return suite


def _column_expectations(
    series: pd.Series, column: str, margin: float, max_categories: int, notes: dict[str, str]
) -> list[dict[str, Any]]:
    nulls = int(series.isna().sum())
    if nulls == len(series):
        # Its dtype is an accident of the file format and there is no range to learn.
        notes[column] = "entirely null in the reference: only its presence is checked"
        return []
    found: list[dict[str, Any]] = []
    types = gx_type_list(series)
    if types is not None:
        found.append(
            _expectation("expect_column_values_to_be_in_type_list", column=column, type_list=types)
        )
    else:
        notes[column] = f"dtype {series.dtype} has no GX type name: type not checked"
    if nulls == 0:
        found.append(_expectation("expect_column_values_to_not_be_null", column=column))
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        values = _value_set(series, max_categories=2)
        if values is not None:
            found.append(
                _expectation("expect_column_values_to_be_in_set", column=column, value_set=values)
            )
    elif pd.api.types.is_numeric_dtype(dtype):
        bounds = _numeric_range(series, margin)
        if bounds is not None:
            found.append(
                _expectation("expect_column_values_to_be_between", column=column, **bounds)
            )
    elif (isinstance(dtype, np.dtype) and dtype.kind == "M") or isinstance(
        dtype, pd.DatetimeTZDtype
    ):
        found.append(
            _expectation(
                "expect_column_values_to_be_between",
                column=column,
                **_datetime_range(series, margin),
            )
        )
    else:
        values = _value_set(series, max_categories)
        if values is not None:
            found.append(
                _expectation("expect_column_values_to_be_in_set", column=column, value_set=values)
            )
    return found


def _check_inferred_suite(reference_df: pd.DataFrame, suite: dict[str, Any]) -> None:
    """The draft must be loadable and must pass on its own reference, or it is a bug."""
    definition = parse_suite(suite, source="inferred suite")
    outcome = validate_frame(reference_df, definition, result_format="BASIC")
    if not outcome.success:
        raise ConfigError(
            "The inferred suite does not validate its own reference data (please report this):\n"
            + "\n".join(failure_lines(outcome.summary))
        )


def suite_to_json(suite: Mapping[str, Any]) -> str:
    """Pretty, stable JSON text for a suite file (unicode column names kept readable)."""
    return json.dumps(json_safe(suite), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
