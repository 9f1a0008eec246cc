"""airflow_mlops.core.suite_inference: a drafted suite describes and validates its reference.

Pure pandas DataFrames and a real (ephemeral) Great Expectations context; no Airflow.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from _fuzz import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_mlops.core import suite_inference as si
from airflow_mlops.core.errors import ConfigError
from airflow_mlops.core.suite import parse_suite, parse_suite_text
from airflow_mlops.core.validation import validate_frame


def reference_frame(rows: int = 400, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age": rng.integers(18, 90, rows),
            "income": rng.normal(50_000, 10_000, rows),
            "city": rng.choice(["Paris", "Oslo", "Rome"], rows),
            "active": rng.random(rows) > 0.3,
            "signup": pd.date_range("2024-01-01", periods=rows, freq="h"),
            "signup_utc": pd.date_range("2024-01-01", periods=rows, freq="h", tz="UTC"),
            "segment": pd.Categorical(rng.choice(["a", "b"], rows)),
            "free_text": [f"note {i}" for i in range(rows)],
            "optional": [None if i % 3 else 1.5 for i in range(rows)],
            "always_empty": [None] * rows,
            "score with space": rng.random(rows),
            "nullable_int": pd.array(
                [None if i % 5 == 0 else i for i in range(rows)], dtype="Int64"
            ),
        }
    )


def test_inferred_suite_describes_the_reference():
    reference = reference_frame()
    suite = si.infer_suite(reference, name="customers", margin=0.1, max_categories=5)
    kinds = {(e["type"], e["kwargs"].get("column")): e["kwargs"] for e in suite["expectations"]}
    assert kinds[("expect_table_columns_to_match_set", None)]["column_set"] == list(
        reference.columns
    )
    assert kinds[("expect_table_row_count_to_be_between", None)] == {
        "min_value": 200,
        "max_value": 600,
    }
    assert ("expect_column_values_to_not_be_null", "age") in kinds
    assert ("expect_column_values_to_not_be_null", "optional") not in kinds
    age = kinds[("expect_column_values_to_be_between", "age")]
    span = reference["age"].max() - reference["age"].min()
    assert age["min_value"] <= reference["age"].min() - 0.1 * span
    assert age["max_value"] >= reference["age"].max() + 0.1 * span
    assert isinstance(age["min_value"], int)
    assert kinds[("expect_column_values_to_be_in_set", "city")]["value_set"] == [
        "Oslo",
        "Paris",
        "Rome",
    ]
    assert kinds[("expect_column_values_to_be_in_set", "segment")]["value_set"] == ["a", "b"]
    assert kinds[("expect_column_values_to_be_in_set", "active")]["value_set"] == [False, True]
    assert ("expect_column_values_to_be_in_set", "free_text") not in kinds  # 400 values > 5
    assert "int64" in kinds[("expect_column_values_to_be_in_type_list", "age")]["type_list"]
    assert not any(column == "always_empty" for _, column in kinds)
    notes = suite["meta"]["airflow_mlops"]["column_notes"]
    assert "entirely null" in notes["always_empty"]
    assert "type not checked" in notes["signup_utc"]


def test_inferred_suite_file_round_trips_and_loads_in_plain_gx():
    import great_expectations as gx

    reference = reference_frame()
    text = si.suite_to_json(si.infer_suite(reference, name="customers"))
    definition = parse_suite_text(text, source="customers.json")
    assert validate_frame(reference, definition).success
    plain = json.loads(text)
    assert len(gx.ExpectationSuite(**plain).expectations) == len(plain["expectations"])


def test_inferred_suite_rejects_a_shifted_copy():
    reference = reference_frame()
    definition = parse_suite(si.infer_suite(reference, margin=0.1))
    shifted = reference.copy()
    shifted["income"] = shifted["income"] + 3 * (shifted["income"].max() - shifted["income"].min())
    shifted.loc[:20, "city"] = "Berlin"
    outcome = validate_frame(shifted, definition)
    assert not outcome.success
    failing = {(f["expectation"], f["column"]) for f in outcome.summary["failures"]}
    assert failing == {
        ("expect_column_values_to_be_between", "income"),
        ("expect_column_values_to_be_in_set", "city"),
    }


def test_infer_suite_handles_infinite_values_and_constant_columns():
    reference = pd.DataFrame({"x": [1.0, 2.0, np.inf], "k": [5, 5, 5], "z": [0.0, 0.0, 0.0]})
    suite = si.infer_suite(reference, margin=0.1)
    bounds = {
        e["kwargs"]["column"]: e["kwargs"]
        for e in suite["expectations"]
        if e["type"] == "expect_column_values_to_be_between"
    }
    assert bounds["x"]["max_value"] is None and bounds["x"]["min_value"] < 1.0
    assert bounds["k"]["min_value"] < 5 < bounds["k"]["max_value"]
    assert bounds["z"]["min_value"] < 0 < bounds["z"]["max_value"]
    json.loads(si.suite_to_json(suite))  # strict JSON: no Infinity


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"margin": -1}, "margin"),
        ({"max_categories": -2}, "max_categories"),
        ({"row_count_margin": -0.1}, "row_count_margin"),
    ],
)
def test_infer_suite_options_are_checked(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        si.infer_suite(reference_frame(20), **kwargs)


def test_infer_suite_refuses_an_empty_reference():
    with pytest.raises(ConfigError, match="0 rows"):
        si.infer_suite(reference_frame().iloc[0:0])


@settings(max_examples=examples(12), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.lists(
        st.tuples(
            st.integers(-(10**9), 10**9),
            st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=True, width=32)),
            st.sampled_from(["a", "b", "ü", "</script>"]),
            st.booleans(),
        ),
        min_size=1,
        max_size=30,
    ),
    margin=st.sampled_from([0.0, 0.05, 0.5]),
)
def test_any_inferred_suite_validates_its_own_reference(data, margin):
    frame = pd.DataFrame(data, columns=["i", "f", "s", "b"])
    suite = si.infer_suite(frame, margin=margin)  # raises if it does not validate the reference
    assert validate_frame(frame, parse_suite(suite)).success
