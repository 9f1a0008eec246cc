"""Corrupted data files: a clear error or a clean validation failure, never a library crash.

hypothesis corrupts a clean table (wrong types, junk values, nulls, missing / extra /
renamed / duplicated columns, CSV encodings, gzip, truncation, flipped bytes, inserted
garbage) and pushes each file through what the CT pipeline does with it, in order:

1. ``core.storage.parse_table`` (what ``Storage.read_table`` parses with);
2. ``core.validation.validate_frame`` with a realistic suite (the pipeline's gate);
3. ``core.training_data.prepare_data`` + the default pipeline's ``fit`` (no MLflow needed).

Step 2 is skipped for some examples: a pipeline may run with validation disabled, and then
whatever the file holds reaches ``prepare_data`` and ``fit``.

Allowed outcomes: an :class:`~airflow_mlops.core.errors.MlopsError` (``UnreadableDataError``,
``DataError``, ``ConfigError``...), or a validation outcome (failed or passed). Anything
else is a crash deep in a library. Two crash families found by a manual 300-example
exploration (damaged gzip streams, infinite feature values) are fixed; their fixed cases
below are the regression tests, and the fuzzer draws both again.

Whatever passes here, the full pipeline still never promotes a model trained on data that
failed validation: see ``test_pipeline_offline_and_secrets.py``.
"""

from __future__ import annotations

import gzip
import uuid

import numpy as np
import pandas as pd
import pytest
from _fuzz import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_mlops.core.errors import DataValidationFailed, MlopsError, UnreadableDataError
from reliability._data import SUITE, clean_frame, csv_bytes, parquet_bytes

JUNK = [None, np.nan, "", "abc", "NaN", "null", "2024-01-01", True, 10**30, -1e300, "é",
        "\x00", "1,5", " ", "[]", "{}", "'", '"', "\n", "DROP TABLE x;", 7, np.inf, -np.inf,
        "inf", "-Infinity"]  # fmt: skip
EXTRA_NAMES = ["extra", "", "x,y", "a\nb", "label ", "Unnamed: 0", "é", "x1.1", "0"]
ENCODINGS = ["utf-8", "utf-16", "latin-1", "utf-8-sig", "cp1252"]


@st.composite
def corrupted_file(draw) -> tuple[bytes, str]:
    frame = clean_frame(rows=60, seed=draw(st.integers(0, 3))).astype(object)
    operations = draw(
        st.lists(
            st.sampled_from(["junk", "nulls", "drop", "extra", "rename", "duplicate"]),
            max_size=4,
        )
    )
    for operation in operations:
        columns = list(frame.columns)
        if not columns:
            break
        column = draw(st.sampled_from(columns))
        position = columns.index(column)
        if operation == "junk":
            for row in draw(st.lists(st.integers(0, len(frame) - 1), max_size=8)):
                frame.iat[row, position] = draw(st.sampled_from(JUNK))
        elif operation == "nulls":
            share = draw(st.sampled_from([0.1, 0.5, 1.0]))
            frame.loc[frame.sample(frac=share, random_state=1).index, column] = None
        elif operation == "drop":
            frame = frame.drop(columns=[column])
        elif operation == "extra":
            frame[draw(st.sampled_from(EXTRA_NAMES))] = draw(st.sampled_from(JUNK))
        elif operation == "rename":
            frame = frame.rename(
                columns={column: draw(st.sampled_from(["X1", "label2", "", "group"]))}
            )
        else:
            frame = pd.concat([frame, frame[[column]]], axis=1)

    fmt = draw(st.sampled_from(["csv", "csv.gz", "parquet"]))
    data = b""
    if fmt == "parquet":
        try:
            data = parquet_bytes(frame)
        except Exception:  # pyarrow cannot store some mixed object columns: write CSV then
            fmt = "csv"
    if fmt != "parquet":
        text = frame.to_csv(index=False)
        data = text.encode(draw(st.sampled_from(ENCODINGS)), errors="replace")
        if fmt == "csv.gz":
            data = gzip.compress(data)
    damaged = bytearray(data)
    # Byte-level damage (of the compressed stream for csv.gz).
    byte_operations = ["none", "truncate", "flip", "garbage", "crlf"]
    for operation in draw(st.lists(st.sampled_from(byte_operations), max_size=2)):
        if not damaged or operation == "none":
            continue
        if operation == "truncate":
            damaged = damaged[: draw(st.integers(0, len(damaged)))]
        elif operation == "flip":
            for _ in range(draw(st.integers(1, 5))):
                at = draw(st.integers(0, len(damaged) - 1))
                damaged[at] ^= draw(st.integers(1, 255))
        elif operation == "garbage":
            at = draw(st.integers(0, len(damaged)))
            damaged[at:at] = draw(st.binary(max_size=20))
        else:
            damaged = bytearray(bytes(damaged).replace(b"\n", b"\r\n"))
    return bytes(damaged), fmt


def _suite():
    from airflow_mlops.core.suite import parse_suite

    return parse_suite(SUITE, source="reliability suite", default_name="reliability")


def run_through_pipeline_core(data: bytes, fmt: str, gate: bool = True) -> str:
    """Read, validate (unless ``gate`` is off) and, if the gate passes, prepare and fit;
    returns the outcome."""
    from airflow_mlops.core.estimators import build_pipeline
    from airflow_mlops.core.storage import parse_table
    from airflow_mlops.core.training_data import check_estimator_accepts_target, prepare_data
    from airflow_mlops.core.training_job import TrainingJob
    from airflow_mlops.core.validation import validate_frame

    uri = f"/data/fuzzed.{fmt}"
    frame = parse_table(data, "parquet" if fmt == "parquet" else "csv", uri)
    if gate:
        outcome = validate_frame(frame, _suite(), data_uri=uri)
        if not outcome.success:
            assert outcome.failure_message().strip()
            return "validation failed"
    config = TrainingJob(
        train_uri=uri,
        target="label",
        experiment_name="unused",
        estimator="sklearn.linear_model.LogisticRegression",
        task="classification",
    )
    prepared = prepare_data(config, frame, "sha", len(frame))
    pipeline = build_pipeline(config, prepared.task, prepared.X_train)
    check_estimator_accepts_target(pipeline, prepared)
    pipeline.fit(prepared.X_train, prepared.y_train)
    return "trained"


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=corrupted_file(), gate=st.booleans())
def test_corrupted_files_end_in_a_clear_error_or_a_validation_verdict(case, gate):
    data, fmt = case
    try:
        run_through_pipeline_core(data, fmt, gate)
    except MlopsError as err:
        assert str(err).strip()


def test_the_clean_file_passes_the_gate_and_trains():
    assert run_through_pipeline_core(csv_bytes(clean_frame()), "csv") == "trained"


@pytest.mark.parametrize(
    ("name", "data", "fmt"),
    [
        ("empty", b"", "csv"),
        ("parquet named csv", parquet_bytes(clean_frame(20)), "csv"),
        ("csv named parquet", csv_bytes(clean_frame(20)), "parquet"),
        ("truncated parquet", parquet_bytes(clean_frame(50))[:300], "parquet"),
        ("random bytes", bytes(range(256)) * 4, "parquet"),
        ("not gzip", csv_bytes(clean_frame(20)), "csv.gz"),
    ],
)
def test_unreadable_files_raise_unreadable_data_error(name, data, fmt):
    from airflow_mlops.core.storage import Storage

    storage = Storage()
    uri_dir = f"/tmp/rel-fuzz-{uuid.uuid4().hex[:8]}"
    uri = f"{uri_dir}/data.{fmt}"
    storage.write_bytes(uri, data)
    with pytest.raises(UnreadableDataError):
        storage.read_table(uri)


def _damaged_gzip(kind: str) -> bytes:
    good = gzip.compress(csv_bytes(clean_frame(200)))
    if kind == "truncated":
        return good[: len(good) // 2]
    damaged = bytearray(good)
    for at in range(20, len(damaged) - 20, 7):
        damaged[at] ^= 0x5A
    return bytes(damaged)


@pytest.mark.parametrize("kind", ["truncated", "corrupted"])
def test_a_damaged_gzip_file_raises_unreadable_data_error(kind, tmp_path):
    from airflow_mlops.core.storage import Storage

    path = tmp_path / "data.csv.gz"
    path.write_bytes(_damaged_gzip(kind))
    with pytest.raises(UnreadableDataError, match=r"data\.csv\.gz"):
        Storage().read_table(str(path))


@pytest.mark.parametrize("value", [np.inf, -np.inf, "inf"], ids=["inf", "-inf", "text inf"])
def test_infinite_feature_values_are_refused_before_training_naming_the_column(value):
    from airflow_mlops.core.errors import DataError
    from airflow_mlops.core.estimators import build_pipeline
    from airflow_mlops.core.storage import parse_table
    from airflow_mlops.core.training_data import prepare_data
    from airflow_mlops.core.training_job import TrainingJob

    frame = clean_frame(60).astype({"x2": object})
    frame.loc[3, "x2"] = value
    frame = parse_table(frame.to_csv(index=False).encode(), "csv", "/data/inf.csv")
    config = TrainingJob(
        train_uri="/data/inf.csv",
        target="label",
        experiment_name="unused",
        estimator="sklearn.linear_model.LogisticRegression",
        task="classification",
    )
    with pytest.raises(DataError, match="x2"):
        prepared = prepare_data(config, frame, "sha", len(frame))
        pipeline = build_pipeline(config, prepared.task, prepared.X_train)
        pipeline.fit(prepared.X_train, prepared.y_train)


def test_the_validation_gate_catches_infinite_values_when_the_suite_bounds_them():
    """Why the bug above is contained in a pipeline with a suite: the gate fails first."""
    from airflow_mlops.core.storage import parse_table
    from airflow_mlops.core.validation import validate_frame

    frame = clean_frame(60).astype({"x2": object})
    frame.loc[3, "x2"] = "inf"  # pandas parses it as float infinity
    frame = parse_table(frame.to_csv(index=False).encode(), "csv", "/data/inf.csv")
    assert np.isinf(frame["x2"]).any()
    outcome = validate_frame(frame, _suite(), data_uri="/data/inf.csv")
    assert not outcome.success and "x2" in outcome.failure_message()


@pytest.mark.parametrize(
    ("name", "data", "fmt", "expected"),
    [
        ("utf-16 csv", clean_frame(80).to_csv(index=False).encode("utf-16"), "csv", "failed"),
        ("truncated parquet", parquet_bytes(clean_frame(80))[:500], "parquet", "failed"),
        ("missing label", csv_bytes(clean_frame(80).drop(columns=["label"])), "csv", "failed"),
        ("nulls", csv_bytes(clean_frame(80).assign(x1=None)), "csv", "failed"),
        ("header only", b"x1,x2,group,label\n", "csv", "failed"),
    ],
)
def test_the_validation_operator_fails_the_task_on_corrupted_files(
    name, data, fmt, expected, run_dag, tmp_path
):
    """Through the real operator and task runner: the gate task fails, with a clear error."""
    from airflow.sdk import DAG

    from airflow_mlops.operators.validation import DataValidationOperator

    path = tmp_path / f"data.{fmt}"
    path.write_bytes(data)
    errors: list[BaseException] = []
    with DAG(f"rel_fuzz_op_{uuid.uuid4().hex[:6]}", schedule=None) as dag:
        DataValidationOperator(
            task_id="validate",
            data_uri=str(path),
            suite=SUITE,
            report_uri=str(tmp_path / "report.json"),
            on_failure_callback=lambda context: errors.append(context["exception"]),
        )
    dag_run = run_dag(dag)
    assert dag_run.state == expected
    (error,) = errors
    assert isinstance(error, UnreadableDataError | DataValidationFailed), repr(error)
    assert str(error).strip()
    if isinstance(error, DataValidationFailed):
        assert error.summary["success"] is False
