"""DataValidationOperator inside real DAGs (``dag.test()``): policies, bad inputs, S3, MLflow."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from airflow.sdk import DAG, task

from airflow_mlops.core.errors import (
    ConfigError,
    DataNotFoundError,
    DataUriNotAllowedError,
    DataValidationFailed,
    UnreadableDataError,
    UnsupportedFormatError,
)
from airflow_mlops.operators.validation import DataValidationOperator

REPO = Path(__file__).parents[1]
EXAMPLE_SUITE_RELATIVE = "include/suites/example_churn.json"
XCOM_LIMIT = 64 * 1024

# on_failure_callback runs in this process under dag.test(): it records the exception.
FAILURES: dict[str, BaseException] = {}


def record_failure(context: Any) -> None:
    FAILURES[context["dag"].dag_id] = context["exception"]


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


def validation_dag(**operator_kwargs: Any) -> DAG:
    """validate >> consume(summary): the downstream task shows what a policy does to the run."""
    dag_id = f"validation_{uuid.uuid4().hex[:10]}"
    with DAG(dag_id, schedule=None) as dag:
        validate = DataValidationOperator(
            task_id="validate", on_failure_callback=record_failure, **operator_kwargs
        )

        @task
        def consume(summary: dict) -> int:
            return summary["failed_expectations"]

        consume(validate.output)
    return dag


def states(dag_run: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}


def summary_of(dag_run: Any) -> dict | None:
    return dag_run.get_task_instance("validate").xcom_pull(task_ids="validate", key="return_value")


def run_validation(run_dag, **operator_kwargs: Any) -> tuple[Any, DAG]:
    dag = validation_dag(**operator_kwargs)
    return run_dag(dag), dag


# -- parse time ------------------------------------------------------------------------------
def test_constructing_the_operator_reads_nothing(tmp_path):
    op = DataValidationOperator(
        task_id="v", data_uri=str(tmp_path / "not-there-yet.parquet"), suite="missing.json"
    )
    assert set(op.template_fields) >= {
        "data_uri",
        "suite",
        "result_format",
        "on_failure",
        "report_uri",
        "mlflow_run_id",
        "aws_conn_id",
        "mlflow_conn_id",
    }


def test_policy_typos_fail_at_parse_time_but_templates_wait():
    with pytest.raises(ConfigError, match="on_failure='ignore'"):
        DataValidationOperator(task_id="v", data_uri="x.csv", suite=[], on_failure="ignore")
    with pytest.raises(ConfigError, match="result_format='FULL'"):
        DataValidationOperator(task_id="v", data_uri="x.csv", suite=[], result_format="FULL")
    DataValidationOperator(task_id="v", data_uri="x.csv", suite=[], on_failure="{{ params.p }}")


# -- policies ----------------------------------------------------------------------------------
def test_passing_data_succeeds_and_pushes_a_summary(tmp_path, run_dag):
    data = tmp_path / "churn.parquet"
    churn_frame().to_parquet(data, index=False)
    report = tmp_path / "reports" / "result.json"
    dag_run, _ = run_validation(
        run_dag, data_uri=str(data), suite=EXAMPLE_SUITE_RELATIVE, report_uri=str(report)
    )
    assert str(dag_run.state) == "success"
    assert states(dag_run) == {"validate": "success", "consume": "success"}
    summary = summary_of(dag_run)
    assert summary["success"] is True
    assert summary["row_count"] == 300
    assert summary["evaluated_expectations"] == 11
    assert summary["failed_expectations"] == 0
    assert summary["data_sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert summary["report_uri"] == str(report)
    assert summary["on_failure"] == "fail"
    full = json.loads(report.read_text())
    assert full["success"] is True and len(full["results"]) == 11
    assert full["meta"]["airflow_mlops"]["data_sha256"] == summary["data_sha256"]


def failing_data(tmp_path: Path) -> Path:
    frame = churn_frame()
    frame.loc[:9, "monthly_charges"] = 999.0
    path = tmp_path / "bad_churn.csv"
    frame.to_csv(path, index=False)
    return path


def test_fail_policy_fails_the_task_with_one_line_per_failure(tmp_path, run_dag):
    report = tmp_path / "result.json"
    dag_run, dag = run_validation(
        run_dag,
        data_uri=str(failing_data(tmp_path)),
        suite=str(REPO / EXAMPLE_SUITE_RELATIVE),
        report_uri=str(report),
    )
    assert str(dag_run.state) == "failed"
    assert states(dag_run) == {"validate": "failed", "consume": "upstream_failed"}
    error = FAILURES[dag.dag_id]
    assert isinstance(error, DataValidationFailed)
    assert (
        '- column "monthly_charges": expect_column_values_to_be_between expected '
        "min_value=0.0, max_value=500.0; observed 10 unexpected values (3.333%), e.g. [999.0]"
    ) in str(error).splitlines()
    assert error.summary["failed_expectations"] == 1
    # The verdict is still inspectable: summary in XCom, full result on disk.
    assert summary_of(dag_run)["failures"][0]["column"] == "monthly_charges"
    assert json.loads(report.read_text())["success"] is False


def test_data_quality_failure_is_not_retried(tmp_path, run_dag):
    """The same data fails the same way: retries would only delay the alert."""
    dag_run, _ = run_validation(
        run_dag,
        data_uri=str(failing_data(tmp_path)),
        suite=str(REPO / EXAMPLE_SUITE_RELATIVE),
        retries=2,
    )
    ti = dag_run.get_task_instance("validate")
    assert str(ti.state) == "failed"
    assert ti.try_number == 1


def test_skip_policy_skips_downstream_without_failing_the_run(tmp_path, run_dag):
    dag_run, dag = run_validation(
        run_dag,
        data_uri=str(failing_data(tmp_path)),
        suite=EXAMPLE_SUITE_RELATIVE,
        on_failure="skip",
        report_uri=str(tmp_path / "r.json"),
    )
    assert str(dag_run.state) == "success"
    assert states(dag_run) == {"validate": "skipped", "consume": "skipped"}
    assert dag.dag_id not in FAILURES
    assert summary_of(dag_run)["failed_expectations"] == 1


def test_warn_policy_continues_and_the_summary_says_what_failed(tmp_path, run_dag):
    dag_run, _ = run_validation(
        run_dag,
        data_uri=str(failing_data(tmp_path)),
        suite=EXAMPLE_SUITE_RELATIVE,
        on_failure="{{ params.policy }}",
        params={"policy": "warn"},
    )
    assert str(dag_run.state) == "success"
    assert states(dag_run) == {"validate": "success", "consume": "success"}
    summary = summary_of(dag_run)
    assert summary["success"] is False and summary["on_failure"] == "warn"
    assert summary["failures"][0]["expectation"] == "expect_column_values_to_be_between"
    # Default report location: the run's artifact folder, named by dag/run/task.
    report = Path(summary["report_uri"])
    assert report.is_file() and report.parts[-2:] == ("validate", "validation_result.json")
    ti = dag_run.get_task_instance("consume")
    assert ti.xcom_pull(task_ids="consume") == 1


def test_templated_data_uri_and_inline_suite(tmp_path, run_dag):
    data = tmp_path / "2024-01-01.parquet"
    churn_frame().to_parquet(data, index=False)
    dag_run, _ = run_validation(
        run_dag,
        data_uri="{{ params.folder }}/2024-01-01.parquet",
        suite=[
            {
                "type": "expect_column_values_to_be_between",
                "kwargs": {"column": "{{ params.column }}", "min_value": 0, "max_value": 10},
            }
        ],
        params={"folder": str(tmp_path), "column": "tenure_months"},
        on_failure="warn",
    )
    summary = summary_of(dag_run)
    assert summary["data_uri"] == str(data)
    assert summary["failures"][0]["column"] == "tenure_months"
    assert summary["suite_name"] == "validate"


# -- bad input: broken input or config always fails the task, whatever on_failure says ----------
def write_bad_input(tmp_path: Path, kind: str) -> str:
    if kind == "missing":
        return str(tmp_path / "nowhere.parquet")
    if kind == "empty":
        path = tmp_path / "empty.csv"
        path.write_bytes(b"")
    elif kind == "garbage_parquet":
        path = tmp_path / "garbage.parquet"
        path.write_bytes(b"\x00\xffnot parquet at all" * 50)
    elif kind == "unknown_extension":
        path = tmp_path / "data.xlsx"
        path.write_bytes(b"PK\x03\x04")
    return str(path)


@pytest.mark.parametrize(
    ("kind", "error_type", "message"),
    [
        ("missing", DataNotFoundError, "No file at"),
        ("empty", UnreadableDataError, "is empty (0 bytes)"),
        ("garbage_parquet", UnreadableDataError, "cannot be read as parquet"),
        ("unknown_extension", UnsupportedFormatError, "Cannot tell the table format"),
    ],
)
def test_broken_data_fails_the_task_even_under_warn(tmp_path, run_dag, kind, error_type, message):
    report = tmp_path / "report.json"
    dag_run, dag = run_validation(
        run_dag,
        data_uri=write_bad_input(tmp_path, kind),
        suite=EXAMPLE_SUITE_RELATIVE,
        on_failure="warn",
        report_uri=str(report),
    )
    assert states(dag_run) == {"validate": "failed", "consume": "upstream_failed"}
    error = FAILURES[dag.dag_id]
    assert isinstance(error, error_type), repr(error)
    assert message in str(error)
    assert not report.exists()  # nothing misleading written
    assert summary_of(dag_run) is None


@pytest.mark.parametrize(
    ("suite_text", "message"),
    [
        ('{"name": "s", "expectations": [', "is not valid JSON"),
        (
            '{"name": "s", "expectations": [{"type": "expect_rows_to_be_nice", "kwargs": {}}]}',
            "expectations[0] (expect_rows_to_be_nice) unknown expectation type",
        ),
        (
            '{"name": "s", "expectations": [{"type": "expect_column_values_to_not_be_null", '
            '"kwargs": {"column": "a", "row_condition": "a.str.len() > 0", '
            '"condition_parser": "pandas"}}]}',
            "uses condition_parser 'pandas', which is refused",
        ),
    ],
    ids=["json", "unknown-type", "pandas-parser"],
)
def test_invalid_suite_fails_before_reading_data(tmp_path, run_dag, suite_text, message):
    suite = tmp_path / "suite.json"
    suite.write_text(suite_text)
    report = tmp_path / "report.json"
    dag_run, dag = run_validation(
        run_dag,
        data_uri=str(tmp_path / "data-never-read.parquet"),  # would be DataNotFoundError
        suite=str(suite),
        on_failure="skip",
        report_uri=str(report),
    )
    assert states(dag_run) == {"validate": "failed", "consume": "upstream_failed"}
    error = FAILURES[dag.dag_id]
    assert isinstance(error, ConfigError)
    assert message in str(error) and str(suite) in str(error)
    assert not report.exists()


def test_missing_suite_file_lists_where_it_looked(tmp_path, run_dag):
    churn_frame().to_parquet(tmp_path / "d.parquet")
    dag_run, dag = run_validation(
        run_dag, data_uri=str(tmp_path / "d.parquet"), suite="include/suites/nope.json"
    )
    assert states(dag_run)["validate"] == "failed"
    error = FAILURES[dag.dag_id]
    assert isinstance(error, ConfigError)
    assert "'include/suites/nope.json' not found; looked in:" in str(error)
    assert str(REPO / "include/suites/nope.json") in str(error)


# -- bad data: data-quality verdicts follow on_failure ----------------------------------------
def data_quality_case(tmp_path: Path, kind: str) -> tuple[str, list, str]:
    """(data path, suite, expected message fragment) for a data-quality problem."""
    frame = churn_frame(50)
    suite: list = [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "customer_id"}},
        {
            "type": "expect_column_values_to_be_between",
            "kwargs": {"column": "monthly_charges", "min_value": 0, "max_value": 500},
        },
    ]
    path = tmp_path / f"{kind}.csv"
    if kind == "header_only":
        path.write_text(",".join(frame.columns) + "\n")
        return str(path), suite, "airflow_mlops.table_not_empty"
    if kind == "missing_column":
        frame = frame.drop(columns=["monthly_charges"])
        fragment = 'observed error: column "monthly_charges" is not in the data'
    elif kind == "wrong_dtype":
        frame["monthly_charges"] = "expensive"
        fragment = "must either be None or of the same type"
    elif kind == "all_null":
        frame["monthly_charges"] = np.nan
        fragment = '- column "monthly_charges": airflow_mlops.column_not_all_null'
    elif kind == "odd_names":
        frame = frame.rename(
            columns={"customer_id": "client id </script>", "monthly_charges": "prix €"}
        )
        frame.loc[0, "prix €"] = 1e6
        suite = [
            {
                "type": "expect_column_values_to_not_be_null",
                "kwargs": {"column": "client id </script>"},
            },
            {
                "type": "expect_column_values_to_be_between",
                "kwargs": {"column": "prix €", "min_value": 0, "max_value": 500},
            },
        ]
        fragment = '- column "prix €": expect_column_values_to_be_between'
    frame.to_csv(path, index=False)
    return str(path), suite, fragment


@pytest.mark.parametrize(
    "kind", ["header_only", "missing_column", "wrong_dtype", "all_null", "odd_names"]
)
def test_data_quality_problems_fail_with_a_specific_line(tmp_path, run_dag, kind):
    data_uri, suite, fragment = data_quality_case(tmp_path, kind)
    report = tmp_path / "report.json"
    dag_run, dag = run_validation(run_dag, data_uri=data_uri, suite=suite, report_uri=str(report))
    assert states(dag_run) == {"validate": "failed", "consume": "upstream_failed"}
    error = FAILURES[dag.dag_id]
    assert isinstance(error, DataValidationFailed)
    assert fragment in str(error), str(error)
    assert json.loads(report.read_text())["success"] is False


@pytest.mark.parametrize("kind", ["header_only", "missing_column", "all_null"])
def test_data_quality_problems_follow_the_skip_policy(tmp_path, run_dag, kind):
    data_uri, suite, _ = data_quality_case(tmp_path, kind)
    dag_run, _ = run_validation(run_dag, data_uri=data_uri, suite=suite, on_failure="skip")
    assert str(dag_run.state) == "success"
    assert states(dag_run) == {"validate": "skipped", "consume": "skipped"}


def test_xcom_summary_of_a_1000_column_frame_stays_under_64kb(tmp_path, run_dag):
    rng = np.random.default_rng(3)
    columns = [f"feature_{i:04d}_" + "n" * 60 for i in range(1000)]
    frame = pd.DataFrame(rng.random((50, 1000)), columns=columns)
    frame.to_parquet(tmp_path / "wide.parquet", index=False)
    suite = [
        {
            "type": "expect_table_columns_to_match_set",
            "kwargs": {"column_set": [*columns[1:], "x"]},
        },
        *(
            {
                "type": "expect_column_values_to_be_between",
                "kwargs": {"column": c, "min_value": 2, "max_value": 3},
            }
            for c in columns[:60]
        ),
    ]
    dag_run, _ = run_validation(
        run_dag, data_uri=str(tmp_path / "wide.parquet"), suite=suite, on_failure="warn"
    )
    summary = summary_of(dag_run)
    assert summary["column_count"] == 1000 and summary["failed_expectations"] == 61
    assert len(json.dumps(summary).encode()) < XCOM_LIMIT


# -- S3 and MLflow -----------------------------------------------------------------------------
def test_s3_data_and_report_on_the_real_s3_fixture(tmp_path, run_dag, s3_bucket, s3_server):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    local = tmp_path / "churn.parquet"
    churn_frame().to_parquet(local, index=False)
    s3.put_object(Bucket=s3_bucket, Key="raw/churn.parquet", Body=local.read_bytes())
    suite_key = "suites/churn.json"
    s3.put_object(
        Bucket=s3_bucket, Key=suite_key, Body=(REPO / EXAMPLE_SUITE_RELATIVE).read_bytes()
    )
    dag_run, _ = run_validation(
        run_dag,
        data_uri=f"s3://{s3_bucket}/raw/churn.parquet",
        suite=f"s3://{s3_bucket}/{suite_key}",
        report_uri=f"s3://{s3_bucket}/reports/{{{{ run_id | replace(':', '_') }}}}/result.json",
    )
    assert states(dag_run) == {"validate": "success", "consume": "success"}
    summary = summary_of(dag_run)
    assert summary["data_uri"] == f"s3://{s3_bucket}/raw/churn.parquet"
    key = summary["report_uri"].removeprefix(f"s3://{s3_bucket}/")
    assert "{{" not in key and key.startswith("reports/")
    report = json.loads(s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    assert report["success"] is True


def test_missing_s3_object_is_a_clear_failure(run_dag, s3_bucket):
    dag_run, dag = run_validation(
        run_dag, data_uri=f"s3://{s3_bucket}/raw/absent.parquet", suite=EXAMPLE_SUITE_RELATIVE
    )
    assert states(dag_run)["validate"] == "failed"
    error = FAILURES[dag.dag_id]
    assert isinstance(error, DataNotFoundError)
    assert f"No object at s3://{s3_bucket}/raw/absent.parquet" in str(error)


def test_result_is_attached_to_the_mlflow_run_idempotently(
    tmp_path, run_dag, mlflow_conn, mlflow_server
):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    experiment_id = client.create_experiment(f"validation-{uuid.uuid4().hex[:8]}")
    run_id = client.create_run(experiment_id).info.run_id
    data = failing_data(tmp_path)
    dag = validation_dag(
        data_uri=str(data),
        suite=EXAMPLE_SUITE_RELATIVE,
        on_failure="warn",
        mlflow_run_id="{{ params.mlflow_run }}",
        params={"mlflow_run": run_id},
    )
    for _ in range(2):  # a second run writes the same artifact paths again
        dag_run = run_dag(dag)
        assert states(dag_run)["validate"] == "success"
    artifacts = sorted(a.path for a in client.list_artifacts(run_id, "validation/validate"))
    assert artifacts == ["validation/validate/result.json", "validation/validate/summary.json"]
    local = client.download_artifacts(run_id, "validation/validate/summary.json", str(tmp_path))
    summary = json.loads(Path(local).read_text())
    assert summary["failed_expectations"] == 1 and summary["on_failure"] == "warn"


def test_a_data_uri_outside_the_allowed_prefixes_fails_before_anything_is_read(tmp_path, run_dag):
    allowed = tmp_path / "data"
    allowed.mkdir()
    report = tmp_path / "report.json"
    dag_run, dag = run_validation(
        run_dag,
        data_uri="/etc/passwd",
        suite=[{"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "a"}}],
        report_uri=str(report),
        allowed_data_prefixes=[str(allowed)],
    )
    assert states(dag_run) == {"validate": "failed", "consume": "upstream_failed"}
    error = FAILURES[dag.dag_id]
    assert isinstance(error, DataUriNotAllowedError), error
    assert "data_uri '/etc/passwd' is outside" in str(error)
    assert not report.exists()


# -- datasets: folders, Hive partitions, globs, windows (issue #16) ----------------------------
CHURN_DAYS = ["2026-11-29", "2026-11-30", "2026-12-01"]
NOT_NULL_ID = [{"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "customer_id"}}]
# Partition keys are columns of the rows (``dt`` here), as the model sees them.
DAILY_SUITE = [
    *NOT_NULL_ID,
    {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "dt"}},
    {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 100}},
]


def land_churn_days(root: Path, rows: int = 100) -> Path:
    """One Hive partition per day, ``rows`` rows each."""
    for n, day in enumerate(CHURN_DAYS):
        folder = root / f"dt={day}"
        folder.mkdir(parents=True)
        churn_frame(rows, seed=n).to_parquet(folder / "part-0.parquet", index=False)
    return root


def test_a_partitioned_folder_validates_the_rows_of_its_window(tmp_path, run_dag):
    churn = land_churn_days(tmp_path / "churn")
    dag_run, _ = run_validation(
        run_dag,
        data_uri=str(churn),
        suite=DAILY_SUITE,
        window={"last_partitions": 2},
        window_end="{{ params.end }}",
        params={"end": CHURN_DAYS[1]},  # e.g. the partition an asset event announced
    )
    assert states(dag_run) == {"validate": "success", "consume": "success"}
    summary = summary_of(dag_run)
    assert (summary["row_count"], summary["files"]) == (200, 2), summary
    assert summary["window"] == "last 2 partitions"
    assert summary["data_sha256"] is None and len(summary["manifest_hash"]) == 16

    glob = run_validation(run_dag, data_uri=f"{churn}/dt=*-12-*/*.parquet", suite=NOT_NULL_ID)
    assert (summary_of(glob[0])["row_count"], summary_of(glob[0])["files"]) == (100, 1)


def test_a_failing_partition_is_named(tmp_path, run_dag):
    churn = land_churn_days(tmp_path / "churn")
    odd = churn / f"dt={CHURN_DAYS[-1]}" / "part-0.parquet"
    churn_frame(10).drop(columns=["contract"]).to_parquet(odd, index=False)
    dag_run, dag = run_validation(
        run_dag, data_uri=str(churn), suite=NOT_NULL_ID, on_failure="warn"
    )
    assert states(dag_run)["validate"] == "failed"
    error = FAILURES[dag.dag_id]
    assert isinstance(error, UnreadableDataError)
    assert f"{odd} has a different schema" in str(error)

    # Outside the window, the odd partition is not read at all.
    dag_run, _ = run_validation(
        run_dag,
        data_uri=str(churn),
        suite=NOT_NULL_ID,
        window={"last_partitions": 2},
        window_end=CHURN_DAYS[1],
    )
    assert states(dag_run)["validate"] == "success"


def test_an_s3_partitioned_prefix(tmp_path, run_dag, s3_bucket, s3_server):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    local = land_churn_days(tmp_path / "churn", rows=50)
    for path in sorted(local.rglob("*.parquet")):
        s3.upload_file(str(path), s3_bucket, f"churn/{path.relative_to(local)}")
    s3.put_object(Bucket=s3_bucket, Key="churn/_SUCCESS", Body=b"")
    dag_run, _ = run_validation(
        run_dag,
        data_uri=f"s3://{s3_bucket}/churn/",
        suite=DAILY_SUITE,
        window={"last_partitions": 2},
    )
    assert states(dag_run) == {"validate": "success", "consume": "success"}
    summary = summary_of(dag_run)
    assert (summary["row_count"], summary["files"]) == (100, 2), summary
