"""core.jsonsafe: one strict-JSON rule and one JSON-text-or-mapping parser for every caller."""

from __future__ import annotations

import datetime as dt
import decimal
import json

import numpy as np
import pandas as pd
import pytest

from airflow_mlops.core.errors import ConfigError
from airflow_mlops.core.jsonsafe import json_safe, parse_json_mapping

NON_FINITE = [float("nan"), float("inf"), -float("inf"), np.nan, np.float32("nan"), np.inf]


@pytest.mark.parametrize("value", NON_FINITE, ids=repr)
def test_non_finite_numbers_become_null(value):
    assert json_safe(value) is None
    assert json.dumps(json_safe({"v": [value]}), allow_nan=False) == '{"v": [null]}'


def test_nested_numpy_pandas_and_odd_values_pass_strict_json():
    value = {
        1: np.int64(3),
        "f32": np.float32(1.5),
        "f64": np.float64(0.25),
        "flag": np.bool_(True),
        "arr": np.array([1.0, np.nan, np.inf]),
        "nested": [({"x": np.float64("nan")},), {np.int32(2)}],
        "idx": pd.Index([1, 2]),
        "na": pd.NA,
        "nat": pd.NaT,
        "ts": pd.Timestamp("2024-01-02T03:04:05Z"),
        "date": dt.date(2024, 1, 2),
        "dec": decimal.Decimal("1.5"),
        "obj": object,
    }
    loaded = json.loads(json.dumps(json_safe(value), allow_nan=False))
    assert loaded == {
        "1": 3,
        "f32": 1.5,
        "f64": 0.25,
        "flag": True,
        "arr": [1.0, None, None],
        "nested": [[{"x": None}], [2]],
        "idx": [1, 2],
        "na": None,
        "nat": None,
        "ts": "2024-01-02T03:04:05+00:00",
        "date": "2024-01-02",
        "dec": 1.5,
        "obj": "<class 'object'>",
    }


def test_bounded_copy_cuts_long_lists_and_text():
    safe = json_safe({"values": list(range(100)), "text": "x" * 1000}, bounded=True)
    assert safe["values"][-1] == "… (90 more)"
    assert len(safe["text"]) == 200


def test_module_is_import_light():
    import subprocess
    import sys

    code = (
        "import sys, airflow_mlops.core.jsonsafe; "
        "print(sorted({'numpy', 'pandas'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("value", ['{"a": 1}', b'{"a": 1}', {"a": 1}])
def test_parse_json_mapping_accepts_text_or_mapping(value):
    assert parse_json_mapping(value, "cfg") == {"a": 1}


@pytest.mark.parametrize(
    ("value", "message"),
    [("{nope", r"^cfg is not valid JSON: "), ("[1]", r"^cfg must be a mapping, got list$")],
)
def test_parse_json_mapping_errors_name_the_field(value, message):
    with pytest.raises(ConfigError, match=message):
        parse_json_mapping(value, "cfg")


def test_parse_json_mapping_keeps_the_callers_wording():
    with pytest.raises(ConfigError, match=r"^params\.x must be a mapping, got int: 5$"):
        parse_json_mapping(
            5, "params.x", not_mapping="{field} must be a mapping, got {type}: {value}"
        )


def test_every_caller_of_the_parser_keeps_its_wording():
    from airflow_mlops.core.policy import parse_policy
    from airflow_mlops.hooks.mlflow import _extra_dict
    from airflow_mlops.operators.base import as_mapping

    cases = [
        (lambda: as_mapping("{", "params.x"), r"^params\.x must be a mapping or JSON object text"),
        (lambda: as_mapping("[1]", "params.x"), r"^params\.x must be a mapping, got list: \[1\]$"),
        (lambda: parse_policy("{"), r"^policy is not valid JSON: "),
        (lambda: parse_policy("[1]"), r"^policy must be a mapping, got list$"),
        (lambda: _extra_dict("{", "c"), r"^Extra of connection 'c' is not valid JSON: "),
        (lambda: _extra_dict("[1]", "c"), r"^Extra of connection 'c' must be a JSON object\.$"),
    ]
    for call, message in cases:
        with pytest.raises(ConfigError, match=message):
            call()
    assert _extra_dict("", "c") == {} and _extra_dict('{"a": 1}', "c") == {"a": 1}
