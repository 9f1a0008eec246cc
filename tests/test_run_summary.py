"""The CT run summary names the error of a failed task (issue 15).

A failed step's row and the run's reason carry the task's own ``Type: message``, pushed by the
operators' failure callback, masked like Airflow's logs and capped. The DAG runs use Airflow's
real task runner (``dag.test()``) and the MLflow server fixture, on tiny files; each run stops
early (no model is trained or registered), so the three of them stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import stored_xcom, task_states

from airflow_mlops.core.summary import (
    ERROR_XCOM_KEY,
    MAX_ERROR_CHARS,
    cap_error,
    describe_error,
    summarize_run,
)
from airflow_mlops.factories import continuous_training_dag, parse_config


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An empty file, a single-class target, a usable file and a broken suite."""
    folder = tmp_path_factory.mktemp("summary_data")
    rows = [f"{i},{i % 3},{i % 2}" for i in range(12)]
    files = {
        "empty": folder / "empty.csv",
        "single_class": folder / "single_class.csv",
        "good": folder / "good.csv",
        "broken_suite": folder / "broken_suite.json",
    }
    files["empty"].write_bytes(b"")
    files["single_class"].write_text("x1,x2,y\n" + "".join(f"{i},{i % 3},1\n" for i in range(12)))
    files["good"].write_text("x1,x2,y\n" + "\n".join(rows) + "\n")
    files["broken_suite"].write_text('{"name": "s", "expectations": [')
    return files


def pipeline(name: str, data: dict[str, Path], **sections: Any) -> Any:
    raw: dict[str, Any] = {
        "name": name,
        "retries": 0,  # a retry would make dag.test() wait out the retry delay
        "data": {"train_uri": str(data["good"]), "target": "y"},
        "validation": {"enabled": False},
        "training": {
            "estimator": "sklearn.ensemble.RandomForestClassifier",
            "params": {"n_estimators": 3, "random_state": 0},
        },
        "promotion": {"serving_check": False},
        "monitoring": {"enabled": False},
    }
    raw.update(sections)
    return parse_config(raw, source=f"<test {name}>")


def failed_summary(dag_run: Any) -> dict[str, Any]:
    states = {task_id: state for (task_id, _), state in task_states(dag_run).items()}
    assert dag_run.state == "failed" and states["summary"] == "failed", states
    summary = stored_xcom(dag_run, "summary")
    assert isinstance(summary, dict), summary
    return summary


def step(summary: dict[str, Any], name: str) -> dict[str, str]:
    return next(s for s in summary["steps"] if s["step"] == name)


@pytest.mark.parametrize(
    ("case", "failed_step", "expected"),
    [
        ("empty", "train", "UnreadableDataError: "),
        ("single_class", "train", "holds a single class"),
    ],
)
def test_failed_task_error_is_in_the_summary(
    data, mlflow_conn, run_dag, case, failed_step, expected
):
    dag_run = run_dag(
        continuous_training_dag(pipeline(f"summary_{case}", data)), train_uri=str(data[case])
    )
    summary = failed_summary(dag_run)
    assert summary["outcome"] == "failed", summary
    assert summary["reason"].startswith(f"task {failed_step} failed: "), summary
    assert expected in summary["reason"], summary
    if case == "empty":
        assert "is empty (0 bytes)" in summary["reason"], summary
    assert expected in step(summary, failed_step)["detail"], summary
    error = stored_xcom(dag_run, failed_step, ERROR_XCOM_KEY)
    assert set(error) == {"error"} and len(error["error"]) <= MAX_ERROR_CHARS, error


def test_broken_suite_is_named_in_the_validation_reason(data, mlflow_conn, run_dag):
    validation = {"suite": str(data["broken_suite"]), "on_failure": "fail"}
    config = pipeline("summary_broken_suite", data, validation=validation)
    summary = failed_summary(run_dag(continuous_training_dag(config)))
    assert summary["outcome"] == "blocked", summary
    reason = summary["reason"]
    assert reason.startswith("validation failed: ConfigError: "), summary
    assert "broken_suite.json is not valid JSON" in reason, summary
    assert step(summary, "train")["state"] == "upstream_failed"
    assert step(summary, "train")["detail"] == ""


# -- the parts, without a DAG run ------------------------------------------------------------


def test_summary_without_an_error_keeps_the_old_text():
    states = {"detect_changes": "success", "train": "failed", "evaluate": "upstream_failed"}
    summary = summarize_run("m", states, {})
    assert summary.reason == "task train failed"
    blocked = summarize_run("m", {"validate": "failed"}, {}, {"validate": None})
    assert blocked.reason == "validation failed: see the validation report"


def test_expectation_failures_win_over_the_error_text():
    validation = {"success": False, "failures": [{"expectation": "e", "column": "c"}]}
    errors = {"validate": {"error": "ValidationGateFailed: 1 expectation failed"}}
    summary = summarize_run("m", {"validate": "failed"}, {"validate": validation}, errors)
    assert summary.reason == "validation failed: e(c)"
    assert summary.steps[0].detail == "ValidationGateFailed: 1 expectation failed"


def test_error_text_is_one_capped_line():
    text = describe_error(ValueError("bad\n  value " + "x" * 1000))
    assert text.startswith("ValueError: bad value x")
    assert "\n" not in text
    capped = cap_error(text)
    assert len(capped) == MAX_ERROR_CHARS and capped.endswith("...")
    assert describe_error(KeyError()) == "KeyError"
    huge = {"train": {"error": "y" * 10_000}}  # an XCom is not trusted to be small
    reason = summarize_run("m", {"train": "failed"}, {}, huge).reason
    assert len(reason) <= len("task train failed: ") + MAX_ERROR_CHARS


def test_error_is_masked_before_it_is_cut():
    from airflow.sdk.log import mask_secret

    from airflow_mlops.operators.base import mask_error

    mask_secret("hunter2-summary-secret")
    text = "login failed for hunter2-summary-secret at postgresql://u:pw0rd@db/mlflow"
    masked = mask_error(text)
    assert "hunter2-summary-secret" not in masked and "pw0rd" not in masked, masked
    assert masked.startswith("login failed for ***")


def test_operators_keep_user_failure_callbacks():
    from airflow_mlops.operators.base import record_task_error
    from airflow_mlops.operators.changes import DetectChangesOperator

    def mine(context: Any) -> None: ...

    operator = DetectChangesOperator(
        task_id="d", train_uri="/d/x.csv", model_name="m", config_hash="h", on_failure_callback=mine
    )
    assert operator.on_failure_callback == [mine, record_task_error]
    assert DetectChangesOperator(
        task_id="e", train_uri="/d/x.csv", model_name="m", config_hash="h"
    ).on_failure_callback == [record_task_error]
