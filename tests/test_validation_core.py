"""airflow_mlops.core.suite, validation and validation_summary: suites, GX runs, messages.

Pure pandas DataFrames and a real (ephemeral) Great Expectations context; no Airflow.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import great_expectations as gx
import numpy as np
import pandas as pd
import pytest

from airflow_mlops.core import validation as v
from airflow_mlops.core.errors import ConfigError
from airflow_mlops.core.jsonsafe import MAX_LIST_ITEMS, MAX_TEXT_CHARS, json_safe
from airflow_mlops.core.suite import SuiteDefinition, parse_suite, read_suite_file, suite_problems
from airflow_mlops.core.validation_summary import (
    MAX_FAILURES_IN_SUMMARY,
    MAX_SAMPLE_VALUES,
    summarize,
    summary_json,
)

EXAMPLE_SUITE = Path(__file__).parents[1] / "include" / "suites" / "example_churn.json"
XCOM_LIMIT = 64 * 1024


def churn_frame(rows: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "customer_id": [f"c{i:05d}" for i in range(rows)],
            "tenure_months": rng.integers(0, 72, rows),
            "monthly_charges": rng.uniform(20, 120, rows).round(2),
            "contract": rng.choice(["month-to-month", "one-year", "two-year"], rows),
            "churned": (rng.random(rows) < 0.25).astype(int),
        }
    )


def expectation(etype: str, **kwargs) -> dict:
    return {"type": etype, "kwargs": kwargs}


def failures_by_type(summary: dict) -> dict[str, dict]:
    return {f["expectation"]: f for f in summary["failures"]}


# -- suites ---------------------------------------------------------------------------------
def test_example_suite_file_is_valid_and_passes_good_data():
    suite = read_suite_file(EXAMPLE_SUITE)
    assert suite.name == "example_churn"
    assert len(suite.expectations) == 11
    outcome = v.validate_frame(churn_frame(), suite, data_uri="mem://churn")
    assert outcome.success, outcome.failure_message()
    assert outcome.summary["failed_expectations"] == 0
    assert outcome.summary["evaluated_expectations"] == 11


def test_suite_summary_and_drift_report_modules_load_no_data_library():
    """Naming a suite, reading a summary or a report's HTML costs no GX, pandas or Evidently
    import (GX loads only when a suite is checked)."""
    code = (
        "import sys\n"
        "import airflow_mlops.core.suite, airflow_mlops.core.validation_summary\n"
        "import airflow_mlops.core.drift_report\n"
        "heavy = ('pandas', 'numpy', 'great_expectations', 'evidently')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_suite_as_list_of_expectation_configs():
    suite = parse_suite(
        [expectation("expect_column_values_to_not_be_null", column="a")], default_name="inline"
    )
    assert suite.name == "inline"
    assert suite.expectations == [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "a"}, "meta": {}}
    ]


def test_suite_file_that_is_not_json_names_the_file(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"name": "x", "expectations": [')
    with pytest.raises(ConfigError, match=r"broken\.json is not valid JSON"):
        read_suite_file(bad)


def test_missing_suite_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_suite_file(tmp_path / "nope.json")


def test_unknown_expectation_is_named_with_its_position():
    suite = {
        "name": "s",
        "expectations": [
            expectation("expect_column_values_to_not_be_null", column="a"),
            expectation("expect_column_to_be_awesome", column="a"),
        ],
    }
    with pytest.raises(ConfigError) as err:
        parse_suite(suite, source="include/suites/s.json")
    message = str(err.value)
    assert "include/suites/s.json" in message
    assert "expectations[1] (expect_column_to_be_awesome) unknown expectation type" in message
    assert "expectations[0]" not in message


def test_every_problem_is_listed_not_only_the_first():
    problems = suite_problems(
        {
            "name": "s",
            "expectations": [
                expectation("expect_column_values_to_be_between", column="a"),
                expectation("expect_column_values_to_not_be_null", column="a", bogus=1),
                {"expectation_type": "expect_column_values_to_not_be_null", "kwargs": {}},
                "not an object",
            ],
        }
    )
    assert len(problems) == 4
    assert "min_value and max_value cannot both be None" in problems[0]
    assert "bogus" in problems[1]
    assert "GX 0.x key 'expectation_type'" in problems[2]
    assert "must be an object" in problems[3]


def test_empty_suite_and_gx_0x_suite_are_refused():
    assert "no expectations" in suite_problems({"name": "s", "expectations": []})[0]
    assert "GX 0.x" in suite_problems({"expectation_suite_name": "s", "expectations": []})[0]
    assert "must be an object or a list" in suite_problems("expect_everything")[0]


def test_options_are_checked_and_named():
    from airflow_mlops.core.suite import check_on_failure, check_result_format

    assert check_result_format("summary") == "SUMMARY"
    assert check_on_failure(" Warn ") == "warn"
    with pytest.raises(ConfigError, match="result_format='FULL'"):
        check_result_format("FULL")
    with pytest.raises(ConfigError, match="on_failure='ignore'"):
        check_on_failure("ignore")


# -- validation results, summaries, messages -------------------------------------------------
def test_failing_data_gives_one_readable_line_per_failure():
    frame = churn_frame()
    frame.loc[:9, "monthly_charges"] = 999.0
    frame.loc[:4, "contract"] = "lifetime"
    outcome = v.validate_frame(
        frame,
        read_suite_file(EXAMPLE_SUITE),
        data_uri="s3://b/churn.parquet",
        report_uri="r.json",
    )
    assert not outcome.success
    summary = outcome.summary
    assert summary["failed_expectations"] == 2
    assert summary["successful_expectations"] == 9
    by_type = failures_by_type(summary)
    between = by_type["expect_column_values_to_be_between"]
    assert between["column"] == "monthly_charges"
    assert between["unexpected_count"] == 10
    assert between["sample_values"] == [999.0]  # distinct values only
    assert between["expected"] == {"min_value": 0.0, "max_value": 500.0}

    message = outcome.failure_message()
    lines = message.splitlines()
    assert lines[0].startswith("Data validation failed for s3://b/churn.parquet: 2 of 11")
    assert (
        '- column "monthly_charges": expect_column_values_to_be_between expected '
        "min_value=0.0, max_value=500.0; observed 10 unexpected values (3.333%), e.g. [999.0]"
    ) in lines
    assert any('column "contract"' in line and '"lifetime"' in line for line in lines)
    assert lines[-1] == "Full result: r.json"


def test_aggregate_failure_shows_observed_value():
    frame = churn_frame()
    frame["churned"] = 1
    outcome = v.validate_frame(frame, read_suite_file(EXAMPLE_SUITE))
    failure = failures_by_type(outcome.summary)["expect_column_mean_to_be_between"]
    assert failure["observed"] == 1.0
    assert (
        "expect_column_mean_to_be_between expected min_value=0.01, max_value=0.6; observed 1.0"
        in (outcome.failure_message())
    )


def test_missing_required_column_is_a_data_failure_that_says_so():
    frame = churn_frame().drop(columns=["monthly_charges"])
    outcome = v.validate_frame(frame, read_suite_file(EXAMPLE_SUITE))
    assert not outcome.success
    columns = {f["column"] for f in outcome.summary["failures"]}
    assert "monthly_charges" in columns
    missing = [f for f in outcome.summary["failures"] if f["column"] == "monthly_charges"]
    assert all(f["error"] == 'column "monthly_charges" is not in the data' for f in missing)
    # GX's own wording stays in the full report.
    assert "in BatchData does not exist" in outcome.report_json()
    match_set = failures_by_type(outcome.summary)["expect_table_columns_to_match_set"]
    assert match_set["details"]["mismatched"]["missing"] == ["monthly_charges"]
    assert "mismatched" in outcome.failure_message()


def test_wrong_dtypes_fail_with_the_reason():
    frame = churn_frame()
    frame["tenure_months"] = frame["tenure_months"].astype(str) + " months"
    outcome = v.validate_frame(frame, read_suite_file(EXAMPLE_SUITE))
    failures = [f for f in outcome.summary["failures"] if f["column"] == "tenure_months"]
    types = {f["expectation"] for f in failures}
    assert types == {
        "expect_column_values_to_be_in_type_list",
        "expect_column_values_to_be_between",
    }
    between = failures_by_type({"failures": failures})["expect_column_values_to_be_between"]
    # GX cannot compare strings with numbers: the metric error is surfaced, not hidden.
    assert "must either be None or of the same type" in between["error"]


def test_all_null_column_fails_even_if_the_suite_only_checks_its_range():
    frame = pd.DataFrame({"x": [np.nan] * 5, "y": [1, 2, 3, 4, 5]})
    suite = parse_suite(
        [expectation("expect_column_values_to_be_between", column="x", min_value=0, max_value=1)]
    )
    gx_only = v.validate_frame(frame, suite, builtin_checks=False)
    assert gx_only.success  # GX alone ignores nulls in range checks
    outcome = v.validate_frame(frame, suite)
    assert not outcome.success
    failure = failures_by_type(outcome.summary)[v.BUILTIN_COLUMN_NOT_ALL_NULL]
    assert failure["column"] == "x"
    assert failure["unexpected_count"] == 5
    assert '- column "x": airflow_mlops.column_not_all_null' in outcome.failure_message()
    assert outcome.result["meta"]["airflow_mlops"]["builtin_failures"][0]["column"] == "x"
    assert outcome.result["success"] is False  # the report agrees with the summary


def test_all_null_column_is_not_reported_twice_or_when_nulls_are_expected():
    frame = pd.DataFrame({"x": [None] * 3, "y": [None] * 3})
    suite = parse_suite(
        [
            expectation("expect_column_values_to_not_be_null", column="x"),
            expectation("expect_column_values_to_be_null", column="y"),
        ]
    )
    outcome = v.validate_frame(frame, suite)
    assert [f["expectation"] for f in outcome.summary["failures"]] == [
        "expect_column_values_to_not_be_null"
    ]


def test_header_only_data_is_not_a_vacuous_pass():
    frame = churn_frame().iloc[0:0]
    suite = parse_suite([expectation("expect_column_values_to_not_be_null", column="customer_id")])
    assert v.validate_frame(frame, suite, builtin_checks=False).success
    outcome = v.validate_frame(frame, suite)
    assert not outcome.success
    assert outcome.summary["row_count"] == 0
    assert outcome.summary["failures"][0]["expectation"] == v.BUILTIN_TABLE_NOT_EMPTY
    assert "header but no rows" in outcome.failure_message()


@pytest.mark.parametrize(
    "column", ["my column", "prix €/kg", "列名", "</script>", 'quote"d', "two\nlines"]
)
def test_odd_column_names_pass_and_fail_cleanly(column):
    frame = pd.DataFrame({column: [1.0, 2.0, 50.0]})
    suite = parse_suite(
        [
            expectation("expect_column_values_to_not_be_null", column=column),
            expectation(
                "expect_column_values_to_be_between", column=column, min_value=0, max_value=10
            ),
        ]
    )
    outcome = v.validate_frame(frame, suite)
    assert outcome.summary["failed_expectations"] == 1
    assert outcome.summary["failures"][0]["column"] == column
    lines = outcome.failure_message().splitlines()
    assert len(lines) == 2  # headline + one line: a newline in a name cannot split it
    assert json.dumps(column, ensure_ascii=False) in lines[1]
    assert json.loads(summary_json(outcome.summary))["failures"][0]["column"] == column
    assert json.loads(outcome.report_json())["success"] is False
    assert v.validate_frame(frame.iloc[:2], suite).success


def test_summary_and_report_never_carry_the_data():
    marker = "SECRET-ROW-VALUE"
    frame = pd.DataFrame({"id": range(1000), "note": [f"{marker}-{i}" for i in range(1000)]})
    suite = parse_suite(
        [
            expectation("expect_column_values_to_not_be_null", column="note"),
            expectation(
                "expect_column_values_to_be_between", column="id", min_value=0, max_value=997
            ),
        ]
    )
    outcome = v.validate_frame(frame, suite, data_uri="x", data_sha256="0" * 64)
    assert marker not in summary_json(outcome.summary)
    assert marker not in outcome.report_json()
    assert outcome.summary["failures"][0]["sample_values"] == [998, 999]
    assert outcome.summary["data_sha256"] == "0" * 64


def test_no_network_traffic_during_validation(monkeypatch):
    attempts = []

    def refuse(self, address):
        attempts.append(address)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    outcome = v.validate_frame(churn_frame(), read_suite_file(EXAMPLE_SUITE))
    assert outcome.success
    assert attempts == []


def test_summary_of_a_1000_column_frame_stays_small():
    rng = np.random.default_rng(1)
    long_names = [f"colonne_très_longue_{i:04d}_" + "x" * 100 for i in range(1000)]
    frame = pd.DataFrame(rng.random((20, 1000)), columns=long_names)
    text_columns = long_names[:150]
    for name in text_columns:
        frame[name] = ["y" * 5000 + str(i) for i in range(20)]
    suite = parse_suite(
        [
            expectation("expect_table_columns_to_match_set", column_set=[*long_names, "absent"]),
            expectation("expect_table_row_count_to_be_between", min_value=100),
            *(
                expectation(
                    "expect_column_values_to_be_in_set",
                    column=name,
                    value_set=["a"] * 1 + [f"v{i}" for i in range(500)],
                )
                for name in text_columns
            ),
        ]
    )
    outcome = v.validate_frame(frame, suite, data_uri="wide.parquet")
    summary = outcome.summary
    size = len(summary_json(summary).encode())
    assert size < XCOM_LIMIT, size
    assert summary["failed_expectations"] == 152
    assert len(summary["failures"]) == MAX_FAILURES_IN_SUMMARY
    assert summary["failures_not_listed"] == 152 - MAX_FAILURES_IN_SUMMARY
    first_set = failures_by_type(summary)["expect_column_values_to_be_in_set"]
    assert len(first_set["sample_values"]) == MAX_SAMPLE_VALUES
    assert all(len(s) <= MAX_TEXT_CHARS for s in first_set["sample_values"])
    assert len(first_set["expected"]["value_set"]) == MAX_LIST_ITEMS + 1  # + "… (N more)"
    assert "… and 132 more failed expectations" in outcome.failure_message()


def test_summary_budget_drops_failures_until_it_fits():
    result = {
        "success": False,
        "suite_name": "s",
        "statistics": {"evaluated_expectations": 1000},
        "results": [
            {
                "success": False,
                "expectation_config": {
                    "type": "expect_x",
                    "kwargs": {"column": f"c{i}" + "z" * 150},
                },
                "result": {"observed_value": "o" * 150},
            }
            for i in range(1000)
        ],
    }
    summary = summarize(
        result, row_count=1, column_count=1000, max_failures=1000, budget_bytes=8000
    )
    assert len(summary_json(summary).encode()) <= 8000
    assert summary["failed_expectations"] == 1000
    assert len(summary["failures"]) + summary["failures_not_listed"] == 1000


def test_json_safe_handles_numpy_pandas_and_non_finite_numbers():
    value = {
        1: np.int64(3),
        "f": np.float32(1.5),
        "nan": float("nan"),
        "inf": np.inf,
        "ts": pd.Timestamp("2024-01-02T03:04:05Z"),
        "na": pd.NA,
        "arr": np.array([1, 2]),
    }
    safe = json_safe(value)
    assert json.loads(json.dumps(safe, allow_nan=False)) == {
        "1": 3,
        "f": 1.5,
        "nan": None,  # strict JSON: one NaN rule for XCom and artifacts (core.jsonsafe)
        "inf": None,
        "ts": "2024-01-02T03:04:05+00:00",
        "na": None,
        "arr": [1, 2],
    }


# -- only the columns the suite reads go to GX -----------------------------------------------
class ExpectColumnValuesToBeWithinHouseRange(gx.expectations.ExpectColumnValuesToBeBetween):
    """A user-defined expectation: its code may read any column, so it disables the subset."""


WIDE_COLUMNS = [f"f{i:02d}" for i in range(30)]


def wide_frame(rows: int = 600, seed: int = 3) -> pd.DataFrame:
    """30 float columns plus a few typed ones; a non-default index to check it is kept."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.random((rows, len(WIDE_COLUMNS))), columns=WIDE_COLUMNS)
    frame["id"] = np.arange(rows)
    frame.loc[rows - 1, "id"] = 0  # one duplicate id
    frame["segment"] = rng.choice(["a", "b", "c"], rows)
    frame["hi"] = frame["f00"] + 0.5
    frame["lo"] = frame["f00"]
    frame.loc[:4, "lo"] = 99.0  # five rows where hi <= lo
    frame["m1"] = rng.integers(0, 5, rows)
    frame["m2"] = 10 - frame["m1"]
    frame.loc[7, "f07"] = np.nan
    frame["empty"] = np.nan
    frame.index = pd.RangeIndex(1000, 1000 + 3 * rows, 3)
    return frame


def wide_suite() -> SuiteDefinition:
    """Passing and failing column expectations of every column-scoped family."""
    return parse_suite(
        [
            expectation("expect_table_row_count_to_be_between", min_value=100, max_value=10_000),
            expectation(
                "expect_column_values_to_be_between", column="f03", min_value=0, max_value=0.9
            ),
            expectation("expect_column_values_to_not_be_null", column="f07"),
            expectation("expect_column_values_to_be_in_set", column="segment", value_set=["a"]),
            expectation("expect_column_mean_to_be_between", column="f10", min_value=0.4),
            expectation("expect_column_values_to_be_unique", column="id"),
            expectation(
                "expect_column_values_to_be_in_type_list", column="f04", type_list=["float64"]
            ),
            expectation("expect_column_to_exist", column="f20"),
            expectation(
                "expect_column_pair_values_a_to_be_greater_than_b", column_A="hi", column_B="lo"
            ),
            expectation("expect_compound_columns_to_be_unique", column_list=["f01", "m1"]),
            expectation("expect_multicolumn_sum_to_equal", column_list=["m1", "m2"], sum_total=10),
            expectation(
                "expect_select_column_values_to_be_unique_within_record",
                column_list=["f01", "f02"],
            ),
            expectation(
                "expect_column_values_to_be_between", column="empty", min_value=0, max_value=1
            ),
            # Columns the data lacks: GX's own "does not exist" failures, subset or not.
            expectation("expect_column_values_to_not_be_null", column="absent"),
            expectation(
                "expect_column_pair_values_to_be_equal", column_A="f05", column_B="absent_too"
            ),
        ]
    )


@pytest.fixture
def frames_given_to_gx(monkeypatch):
    """The column labels of every frame handed to GX's ``ValidationDefinition.run``."""
    seen: list[list] = []
    original = gx.ValidationDefinition.run

    def spy(self, *args, **kwargs):
        seen.append(list(kwargs["batch_parameters"]["dataframe"].columns))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(gx.ValidationDefinition, "run", spy)
    return seen


def comparable(outcome: v.ValidationOutcome) -> dict:
    """Summary and report without what differs between any two runs (ids, clocks)."""
    report = json.loads(outcome.report_json())
    meta = report["meta"]
    for key in ("validation_id", "run_id", "validation_time"):
        meta.pop(key)
    meta["batch_markers"].pop("ge_load_time")
    for result in report["results"]:
        result["expectation_config"].pop("id")
    return {"summary": outcome.summary, "report": report, "success": outcome.success}


def suite_of(*expectations: dict) -> SuiteDefinition:
    return SuiteDefinition(name="s", expectations=list(expectations), meta={}, source="test")


@pytest.mark.parametrize(
    ("expectations", "expected"),
    [
        pytest.param(
            [expectation("expect_column_values_to_not_be_null", column="d")],
            ["d"],
            id="one-column",
        ),
        pytest.param(
            [
                expectation("expect_column_max_to_be_between", column="e", max_value=1),
                expectation("expect_column_values_to_not_be_null", column="b"),
                expectation("expect_column_values_to_be_unique", column="e"),
            ],
            ["b", "e"],  # frame order, no repeats
            id="frame-order",
        ),
        pytest.param(
            [
                expectation("expect_column_pair_values_to_be_equal", column_A="a", column_B="c"),
                expectation("expect_multicolumn_sum_to_equal", column_list=["d", "c"], sum_total=1),
                expectation("expect_compound_columns_to_be_unique", column_list=["e", "a"]),
                expectation(
                    "expect_select_column_values_to_be_unique_within_record",
                    column_list=["d", "a"],
                ),
            ],
            ["a", "c", "d", "e"],
            id="pair-and-multicolumn",
        ),
        pytest.param(
            [
                expectation("expect_table_row_count_to_be_between", min_value=1),
                expectation("expect_table_row_count_to_equal", value=3),
                expectation("expect_column_values_to_not_be_null", column="c"),
            ],
            ["c"],
            id="row-count-keeps-rows",
        ),
        pytest.param(
            [
                expectation("expect_column_values_to_not_be_null", column="c"),
                expectation("expect_column_values_to_not_be_null", column="not_in_frame"),
                expectation(
                    "expect_column_pair_values_to_be_equal", column_A="a", column_B="nor_this"
                ),
            ],
            ["a", "c"],  # GX reports the missing ones, as on the whole frame
            id="missing-columns-left-out",
        ),
        pytest.param(
            [
                expectation("expect_column_values_to_not_be_null", column="a", row_condition=None),
                expectation("expect_column_to_exist", column="b"),
                expectation(
                    "expect_column_values_to_be_between",
                    column="c",
                    min_value=0,
                    max_value=1,
                    mostly=0.9,
                    result_format="COMPLETE",
                ),
            ],
            ["a", "b", "c"],
            id="harmless-kwargs",
        ),
    ],
)
def test_columns_to_validate_is_the_referenced_frame_columns(expectations, expected):
    suite = parse_suite(expectations)
    assert v.columns_to_validate(suite, ["a", "b", "c", "d", "e", "f"]) == expected


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param(
            expectation(
                "expect_column_values_to_not_be_null",
                column="a",
                row_condition='col("f")=="x"',
                condition_parser="great_expectations",
            ),
            id="row-condition",
        ),
        pytest.param(
            expectation("expect_table_columns_to_match_set", column_set=["a"]), id="column-set"
        ),
        pytest.param(
            expectation("expect_table_columns_to_match_ordered_list", column_list=["a"]),
            id="ordered-list",
        ),
        pytest.param(expectation("expect_table_column_count_to_equal", value=6), id="col-count"),
        pytest.param(
            expectation("expect_table_column_count_to_be_between", min_value=1), id="col-range"
        ),
        pytest.param(
            expectation("expect_column_to_exist", column="c", column_index=2), id="column-index"
        ),
        pytest.param(
            expectation(
                "expect_column_values_to_not_be_null",
                column="a",
                result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["f"]},
            ),
            id="result-format-naming-columns",
        ),
        pytest.param(
            expectation("expect_column_values_to_not_be_null", column={"$PARAMETER": "col"}),
            id="column-as-parameter",
        ),
        pytest.param(
            expectation("expect_column_values_to_not_be_null", column="a", windows=[]),
            id="unusual-kwarg",
        ),
        pytest.param(
            expectation("expect_column_values_to_be_fancy", column="a"), id="unknown-type"
        ),
        pytest.param(
            expectation(
                "expect_column_values_to_be_within_house_range",
                column="a",
                min_value=0,
                max_value=1,
            ),
            id="custom-expectation",
        ),
        pytest.param({"kwargs": {"column": "a"}}, id="no-type"),
    ],
)
def test_columns_to_validate_falls_back_to_the_whole_frame(entry):
    column_scoped = expectation("expect_column_values_to_not_be_null", column="b")
    # Built directly: a few of these configs are refused by parse_suite or GX anyway.
    suite = suite_of(column_scoped, entry)
    assert v.columns_to_validate(suite_of(column_scoped), list("abcdef")) == ["b"]
    assert v.columns_to_validate(suite, list("abcdef")) is None


@pytest.mark.parametrize(
    ("frame_columns", "why"),
    [
        (["a", "b", "a", "c"], "duplicate labels"),
        (["a", "b", 3, "c"], "non-string label"),
        (["a", "b"], "every column is referenced: nothing to gain"),
        (["x", "y", "z"], "no referenced column present: GX never gets a column-less frame"),
    ],
)
def test_columns_to_validate_whole_frame_when_a_subset_is_pointless_or_unsafe(frame_columns, why):
    suite = parse_suite(
        [
            expectation("expect_column_values_to_not_be_null", column="a"),
            expectation("expect_column_values_to_not_be_null", column="b"),
        ]
    )
    assert v.columns_to_validate(suite, frame_columns) is None, why


def test_gx_receives_only_the_referenced_columns(frames_given_to_gx):
    frame = wide_frame()
    v.validate_frame(frame, wide_suite())
    v.validate_frame(frame, wide_suite(), only_referenced_columns=False)
    referenced = ["f01", "f02", "f03", "f04", "f05", "f07", "f10", "f20"]
    referenced += ["id", "segment", "hi", "lo", "m1", "m2", "empty"]
    assert frames_given_to_gx == [referenced, list(frame.columns)]


@pytest.mark.parametrize("result_format", ["SUMMARY", "COMPLETE"])
def test_subset_gives_the_same_summary_report_and_verdict(result_format, frames_given_to_gx):
    frame = wide_frame()
    subset = v.validate_frame(
        frame, wide_suite(), result_format=result_format, data_uri="mem://wide", report_uri="r"
    )
    whole = v.validate_frame(
        frame,
        wide_suite(),
        result_format=result_format,
        data_uri="mem://wide",
        report_uri="r",
        only_referenced_columns=False,
    )
    assert len(frames_given_to_gx[0]) == 15 and len(frames_given_to_gx[1]) == frame.shape[1]
    assert comparable(subset) == comparable(whole)
    assert subset.failure_message() == whole.failure_message()

    summary = subset.summary
    assert summary["column_count"] == frame.shape[1]  # the data's width, not GX's view
    failed = {(f["expectation"], json.dumps(f["column"])) for f in summary["failures"]}
    assert failed == {
        ("airflow_mlops.column_not_all_null", '"empty"'),
        ("expect_column_values_to_be_between", '"f03"'),
        ("expect_column_values_to_not_be_null", '"f07"'),
        ("expect_column_values_to_be_in_set", '"segment"'),
        ("expect_column_values_to_be_unique", '"id"'),
        ("expect_column_pair_values_a_to_be_greater_than_b", '["hi", "lo"]'),
        ("expect_column_values_to_not_be_null", '"absent"'),
        ("expect_column_pair_values_to_be_equal", '["f05", "absent_too"]'),
    }
    pair = failures_by_type(summary)["expect_column_pair_values_a_to_be_greater_than_b"]
    assert pair["unexpected_count"] == 5
    absent = next(f for f in summary["failures"] if f["column"] == "absent")
    assert absent["error"] == 'column "absent" is not in the data'
    assert 'The column \\"absent_too\\" in BatchData does not exist' in subset.report_json()
    if result_format == "COMPLETE":  # row positions are the frame's own index labels
        index_list = [
            r["result"]["unexpected_index_list"]
            for r in subset.result["results"]
            if r["expectation_config"]["kwargs"].get("column") == "f07"
        ]
        assert index_list == [[frame.index[7]]]


def test_report_keeps_the_fingerprint_of_the_whole_frame():
    from great_expectations.execution_engine.pandas_execution_engine import (
        hash_pandas_dataframe,
    )

    frame = wide_frame()
    outcome = v.validate_frame(frame, wide_suite())
    markers = outcome.result["meta"]["batch_markers"]
    assert markers["pandas_data_fingerprint"] == hash_pandas_dataframe(frame)
    assert markers["pandas_data_fingerprint"] != hash_pandas_dataframe(frame[["f03", "f07"]])


def test_row_condition_on_another_column_validates_the_whole_frame(frames_given_to_gx):
    frame = wide_frame()
    frame.loc[frame["segment"] != "a", "f03"] = 5.0  # out of range, but only outside "a"
    suite = parse_suite(
        [
            expectation(
                "expect_column_values_to_be_between",
                column="f03",
                min_value=0,
                max_value=1,
                row_condition='col("segment")=="a"',
                condition_parser="great_expectations",
            ),
            expectation("expect_column_values_to_not_be_null", column="f04"),
        ]
    )
    outcome = v.validate_frame(frame, suite)
    # "segment" is named by no column kwarg: without it GX could not filter the rows.
    assert frames_given_to_gx == [list(frame.columns)]
    assert outcome.success, outcome.failure_message()
    whole = v.validate_frame(frame, suite, only_referenced_columns=False)
    assert comparable(outcome) == comparable(whole)


@pytest.fixture
def batches_given_to_gx(monkeypatch):
    """(column labels, row count) of every frame handed to GX's ``ValidationDefinition.run``."""
    seen: list[tuple[list, int]] = []
    original = gx.ValidationDefinition.run

    def spy(self, *args, **kwargs):
        frame = kwargs["batch_parameters"]["dataframe"]
        seen.append((list(frame.columns), len(frame)))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(gx.ValidationDefinition, "run", spy)
    return seen


def schema_checks(frame: pd.DataFrame) -> list[dict]:
    """Expectations that read only column names: two hold on ``frame``, four do not."""
    columns = list(frame.columns)
    return [
        expectation("expect_table_column_count_to_equal", value=frame.shape[1]),
        expectation("expect_table_columns_to_match_set", column_set=[*columns[1:], "gone"]),
        expectation("expect_table_columns_to_match_ordered_list", column_list=columns[::-1]),
        expectation("expect_table_column_count_to_be_between", min_value=1, max_value=3),
        # A column's position is a table property too: f04 is the 5th column of the data only.
        expectation("expect_column_to_exist", column="f04", column_index=4),
        expectation("expect_column_to_exist", column="nope"),
    ]


@pytest.mark.parametrize("result_format", ["SUMMARY", "COMPLETE"])
def test_schema_checks_run_on_a_zero_row_frame_and_values_on_the_subset(
    result_format, batches_given_to_gx
):
    """Every bundled and inferred suite checks the column set; that alone used to force GX
    onto the whole frame. Column-name checks now get every column without rows."""
    frame = wide_frame()
    checks = wide_suite().expectations
    suite = parse_suite([checks[0], *schema_checks(frame), *checks[1:]])
    split = v.validate_frame(frame, suite, result_format=result_format, data_uri="mem://w")
    whole = v.validate_frame(
        frame, suite, result_format=result_format, data_uri="mem://w", only_referenced_columns=False
    )
    (values, rows), (names, no_rows), everything = batches_given_to_gx
    assert (len(values), rows) == (15, len(frame))
    assert (names, no_rows) == (list(frame.columns), 0)
    assert everything == (list(frame.columns), len(frame))
    # Same verdict, statistics, result order, messages and fingerprint as one whole-frame run.
    assert comparable(split) == comparable(whole)
    assert split.failure_message() == whole.failure_message()
    assert split.result["suite_name"] == suite.name
    assert split.result["statistics"]["unsuccessful_expectations"] == 11
    failed = {f["expectation"] for f in split.summary["failures"]}
    assert {"expect_table_columns_to_match_set", "expect_column_to_exist"} <= failed


def test_schema_checks_alone_or_with_a_full_width_subset_stay_one_batch(batches_given_to_gx):
    frame = wide_frame()
    only_names = parse_suite(schema_checks(frame))
    every_column = parse_suite(
        [
            *schema_checks(frame)[:1],
            *(expectation("expect_column_values_to_not_be_null", column=c) for c in frame.columns),
        ]
    )
    for suite in (only_names, every_column):
        v.validate_frame(frame, suite)
        assert batches_given_to_gx.pop() == (list(frame.columns), len(frame))
        assert batches_given_to_gx == []


@pytest.mark.parametrize(("read", "subset"), [(5, True), (6, False)])
def test_a_subset_is_used_only_when_it_drops_half_the_columns_or_more(
    read, subset, batches_given_to_gx
):
    """Near the full width the copy and a second fingerprint cost what GX saves (1M x 20,
    16 columns read: slower and +117 MB with the subset), so GX gets the frame itself."""
    frame = pd.DataFrame({f"c{i}": [0.5, 0.25, 0.75] for i in range(10)})
    reads = [
        expectation("expect_column_values_to_not_be_null", column=f"c{i}") for i in range(read)
    ]
    schema = expectation("expect_table_column_count_to_equal", value=10)
    for suite in (parse_suite(reads), parse_suite([schema, *reads])):
        assert v.validate_frame(frame, suite).success
    every, some = list(frame.columns), list(frame.columns[:read])
    if subset:  # the values suite, then the values and the zero-row schema batch
        assert batches_given_to_gx == [(some, 3), (some, 3), (every, 0)]
    else:
        assert batches_given_to_gx == [(every, 3), (every, 3)]


# -- suites are configuration, not code (issue #14, item 5) ------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"row_condition": 'f=="x"', "condition_parser": "pandas"}, "condition_parser 'pandas'"),
        ({"row_condition": "f.str.len() > 0", "condition_parser": "spark"}, "'spark'"),
        (
            {"row_condition": {"type": "pass_through", "pass_through_filter": 'f=="x"'}},
            "PassThroughCondition is refused",
        ),
        (
            {
                "row_condition": {
                    "type": "comparison",
                    "column": {"name": "f` + 1 + `g"},
                    "operator": "==",
                    "parameter": "x",
                }
            },
            "contains a backtick",
        ),
    ],
    ids=["pandas-parser", "spark-parser", "pass-through", "backtick-column"],
)
def test_suite_refuses_row_conditions_that_reach_dataframe_query(tmp_path, kwargs, message):
    """pandas' DataFrame.query evaluates attribute calls: a suite must never reach it raw."""
    entry = expectation("expect_column_values_to_not_be_null", column="a", **kwargs)
    suite_file = tmp_path / "suite.json"
    suite_file.write_text(json.dumps({"name": "s", "expectations": [entry]}))
    with pytest.raises(ConfigError, match=message):
        read_suite_file(suite_file)


def test_gx_parsed_row_condition_still_filters_rows():
    frame = pd.DataFrame({"a": [1.0, None, 3.0], "f": ["x", "y", "x"]})
    suite = parse_suite(
        [
            expectation(
                "expect_column_values_to_not_be_null",
                column="a",
                row_condition='col("f")=="x"',
                condition_parser="great_expectations",
            )
        ]
    )
    assert v.validate_frame(frame, suite).success  # the null is in a row where f == "y"
