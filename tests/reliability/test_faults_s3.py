"""The S3 server dies while a task reads its data or writes its report; the retry succeeds.

Real moto server, real boto3 (through the Amazon provider's ``S3Hook``), real Airflow task
runner (``dag.test()``). The only patch is :func:`reliability.conftest.outage`: it kills
the S3 server right before our ``Storage`` method runs, so the call meets a dead server.
The task's ``on_retry_callback`` brings S3 back (with the objects a durable store keeps),
as an operator on call would; Airflow's own retry then runs the task again.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from conftest import task_states

from reliability._data import SUITE, clean_frame, csv_bytes
from reliability.conftest import outage, restore_on_retry

pytestmark = pytest.mark.timeout(240)


def _validation_dag(dag_id: str, *, data_uri: str, report_uri: str, on_retry):
    from airflow.sdk import DAG

    from airflow_mlops.operators.validation import DataValidationOperator

    with DAG(dag_id, schedule=None) as dag:
        DataValidationOperator(
            task_id="validate",
            data_uri=data_uri,
            suite=SUITE,
            report_uri=report_uri,
            retries=1,
            retry_delay=timedelta(seconds=0),
            on_retry_callback=on_retry,
        )
    return dag


def _is_s3(_self, uri, *args, **kwargs) -> bool:
    return str(uri).startswith("s3://")


def _assert_clear_s3_failure(failure: str, endpoint: str) -> None:
    """The failed try names what it could not reach, not an opaque library trace.

    Reports go through boto3 (``EndpointConnectionError`` with the endpoint URL), data through
    pyarrow's S3 filesystem (``NETWORK_CONNECTION`` with the host and port): both name the server.
    """
    host, port = endpoint.removeprefix("http://").rsplit(":", 1)
    assert "Could not connect" in failure, failure
    assert f"{host}:{port}" in failure or f"{host} port {port}" in failure, failure


def test_s3_down_while_reading_data_fails_clearly_then_the_retry_succeeds(
    s3, run_dag, tmp_path, monkeypatch
):
    from airflow_mlops.core import data_window

    data_uri = s3.put("data/train.csv", csv_bytes(clean_frame()))
    report = tmp_path / "validation.json"
    on_retry = restore_on_retry(s3.restore)
    dag = _validation_dag(
        f"rel_s3_read_{uuid.uuid4().hex[:6]}",
        data_uri=data_uri,
        report_uri=str(report),
        on_retry=on_retry,
    )
    with outage(monkeypatch, data_window, "read_window", s3.server, when=_is_s3) as injected:
        dag_run = run_dag(dag)

    assert injected.kills == 1, "the server was killed during the first read"
    assert injected.calls == 2, "one read per try"
    (failure,) = on_retry.failures
    _assert_clear_s3_failure(failure, s3.server.url)
    assert dag_run.state == "success"
    assert task_states(dag_run)[("validate", -1)] == "success"
    written = json.loads(report.read_text())
    assert written["success"] is True
    assert written["meta"]["airflow_mlops"]["data_uri"] == data_uri


def test_s3_down_while_writing_the_report_fails_clearly_then_the_retry_writes_it_once(
    s3, run_dag, tmp_path, monkeypatch
):
    from airflow_mlops.core.storage import Storage

    data = tmp_path / "train.csv"
    data.write_bytes(csv_bytes(clean_frame()))
    report_key = "reports/validation.json"
    on_retry = restore_on_retry(s3.restore)
    dag = _validation_dag(
        f"rel_s3_write_{uuid.uuid4().hex[:6]}",
        data_uri=str(data),
        report_uri=s3.uri(report_key),
        on_retry=on_retry,
    )
    with outage(monkeypatch, Storage, "write_bytes", s3.server, when=_is_s3) as injected:
        dag_run = run_dag(dag)

    assert injected.kills == 1
    (failure,) = on_retry.failures
    _assert_clear_s3_failure(failure, s3.server.url)
    assert dag_run.state == "success"
    # Exactly the one report, complete and parseable: no partial object, no duplicate.
    assert s3.object_keys() == [report_key]
    written = json.loads(s3.get(report_key))
    assert written["success"] is True


@pytest.mark.parametrize("stage", ["read", "write"])
def test_without_retries_the_s3_outage_fails_the_task_and_writes_nothing(
    stage, s3, run_dag, tmp_path, monkeypatch
):
    """Fail closed: no retry left, the task fails and no report claims the data was checked."""
    from airflow.sdk import DAG

    from airflow_mlops.core.storage import Storage
    from airflow_mlops.operators.validation import DataValidationOperator

    local = tmp_path / "train.csv"
    local.write_bytes(csv_bytes(clean_frame()))
    data_uri = s3.put("data/train.csv", local.read_bytes()) if stage == "read" else str(local)
    report_uri = str(tmp_path / "report.json") if stage == "read" else s3.uri("r/report.json")
    with DAG(f"rel_s3_noretry_{stage}_{uuid.uuid4().hex[:6]}", schedule=None) as dag:
        DataValidationOperator(
            task_id="validate", data_uri=data_uri, suite=SUITE, report_uri=report_uri, retries=0
        )
    from airflow_mlops.core import data_window

    owner, method = (data_window, "read_window") if stage == "read" else (Storage, "write_bytes")
    with outage(monkeypatch, owner, method, s3.server, when=_is_s3) as injected:
        dag_run = run_dag(dag)
    assert injected.kills == 1
    assert dag_run.state == "failed"
    assert task_states(dag_run)[("validate", -1)] == "failed"
    s3.restore()
    assert not (tmp_path / "report.json").exists()
    assert "r/report.json" not in s3.object_keys()
