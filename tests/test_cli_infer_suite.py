"""``airflow-mlops infer-suite``: a bootstrapped suite validates its reference and rejects a shift."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from airflow.sdk import DAG

from airflow_mlops.cli import build_parser, main
from airflow_mlops.core.suite import parse_suite_text
from airflow_mlops.core.validation import validate_frame
from airflow_mlops.operators.validation import DataValidationOperator

FAILURES: dict[str, BaseException] = {}


def record_failure(context: Any) -> None:
    FAILURES[context["dag"].dag_id] = context["exception"]


def reference_frame(rows: int = 500, seed: int = 11) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "tenure_months": rng.integers(0, 72, rows),
            "monthly_charges": rng.uniform(20, 120, rows).round(2),
            "contract": rng.choice(["month-to-month", "one-year", "two-year"], rows),
            "signup": pd.date_range("2023-01-01", periods=rows, freq="D"),
            "churned": rng.random(rows) < 0.25,
        }
    )


@pytest.fixture
def reference(tmp_path: Path) -> Path:
    path = tmp_path / "reference.parquet"
    reference_frame().to_parquet(path, index=False)
    return path


def test_help_lists_the_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--help"])
    assert exit_info.value.code == 0
    assert "infer-suite" in capsys.readouterr().out


def test_infer_suite_writes_an_editable_gx_suite(reference, tmp_path, capsys):
    out = tmp_path / "suites" / "churn.json"
    code = main(
        ["infer-suite", str(reference), "-o", str(out), "--margin", "0.2", "--max-categories", "5"]
    )
    assert code == 0
    assert "Wrote" in capsys.readouterr().err
    suite = json.loads(out.read_text())
    assert suite["name"] == "churn"
    meta = suite["meta"]["airflow_mlops"]
    assert meta["margin"] == 0.2 and meta["max_categories"] == 5
    assert meta["reference"]["uri"] == str(reference)
    assert len(meta["reference"]["sha256"]) == 64
    types = {(e["type"], e["kwargs"].get("column")) for e in suite["expectations"]}
    assert ("expect_column_values_to_be_in_set", "contract") in types
    assert ("expect_column_values_to_be_between", "signup") in types
    assert ("expect_table_row_count_to_be_between", None) in types
    # Plain GX 1.x: loadable by GX itself, and by our checker.
    import great_expectations as gx

    assert len(gx.ExpectationSuite(**suite).expectations) == len(suite["expectations"])
    definition = parse_suite_text(out.read_text(), source=str(out))
    assert validate_frame(reference_frame(), definition).success


def test_existing_suite_is_not_overwritten_without_force(reference, tmp_path, capsys):
    out = tmp_path / "edited.json"
    out.write_text('{"hand": "edited"}')
    assert main(["infer-suite", str(reference), "-o", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert out.read_text() == '{"hand": "edited"}'
    assert main(["infer-suite", str(reference), "-o", str(out), "--force"]) == 0
    assert json.loads(out.read_text())["name"] == "edited"


def test_stdout_output(reference, capsys):
    assert main(["infer-suite", str(reference), "-o", "-", "--name", "piped"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "piped"


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "No file at"),
        ("header_only", "Cannot infer a suite from reference data with 0 rows"),
        ("unknown_extension", "Cannot tell the table format"),
    ],
)
def test_bad_reference_gives_one_clear_error_line(tmp_path, capsys, setup, message):
    if setup == "missing":
        data = tmp_path / "absent.parquet"
    elif setup == "header_only":
        data = tmp_path / "header.csv"
        data.write_text("a,b\n")
    else:
        data = tmp_path / "data.json"
        data.write_text("{}")
    out = tmp_path / "suite.json"
    assert main(["infer-suite", str(data), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err
    assert not out.exists()


def test_bad_options_are_usage_errors(reference, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["infer-suite", str(reference), "-o", str(tmp_path / "s.json"), "--margin", "-1"])
    assert exit_info.value.code == 2
    assert "--margin: must be >= 0" in capsys.readouterr().err


def test_console_script_is_installed(reference, tmp_path):
    script = Path(sys.executable).parent / "airflow-mlops"
    out = tmp_path / "suite.json"
    result = subprocess.run(
        [str(script), "infer-suite", str(reference), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(out.read_text())["expectations"]


def test_s3_reference_and_output(reference, s3_bucket, s3_server, monkeypatch, capsys):
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    s3.put_object(Bucket=s3_bucket, Key="ref/reference.parquet", Body=reference.read_bytes())
    out = f"s3://{s3_bucket}/suites/churn.json"
    assert main(["infer-suite", f"s3://{s3_bucket}/ref/reference.parquet", "-o", out]) == 0, (
        capsys.readouterr().err
    )
    suite = json.loads(s3.get_object(Bucket=s3_bucket, Key="suites/churn.json")["Body"].read())
    assert suite["name"] == "churn"


def validate_in_dag(run_dag, data: Path, suite: Path) -> tuple[Any, str]:
    dag_id = f"bootstrap_{uuid.uuid4().hex[:10]}"
    with DAG(dag_id, schedule=None) as dag:
        DataValidationOperator(
            task_id="validate",
            data_uri=str(data),
            suite=str(suite),
            report_uri=str(data.with_suffix(".report.json")),
            on_failure_callback=record_failure,
        )
    return run_dag(dag), dag_id


def test_bootstrapped_suite_passes_its_reference_and_rejects_a_shifted_copy(
    reference, tmp_path, run_dag
):
    suite = tmp_path / "churn.json"
    assert main(["infer-suite", str(reference), "-o", str(suite)]) == 0

    dag_run, _ = validate_in_dag(run_dag, reference, suite)
    assert str(dag_run.state) == "success"
    summary = dag_run.get_task_instance("validate").xcom_pull(task_ids="validate")
    assert summary["success"] is True and summary["failed_expectations"] == 0

    shifted = reference_frame()
    shifted["monthly_charges"] = shifted["monthly_charges"] + 200
    shifted["contract"] = shifted["contract"].replace("two-year", "three-year")
    shifted_path = tmp_path / "shifted.csv"
    shifted.to_csv(shifted_path, index=False)

    dag_run, dag_id = validate_in_dag(run_dag, shifted_path, suite)
    assert str(dag_run.state) == "failed"
    message = str(FAILURES[dag_id])
    assert '- column "monthly_charges": expect_column_values_to_be_between' in message
    assert '- column "contract": expect_column_values_to_be_in_set' in message
    assert '"three-year"' in message
