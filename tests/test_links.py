"""MLflow extra links: URL building, parameter persistence, and the real Airflow link flow."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import pytest

from airflow_mlops.links.mlflow import (
    EXPERIMENT_LINK_KEY,
    MODEL_VERSION_LINK_KEY,
    RUN_LINK_KEY,
    MlflowExperimentLink,
    MlflowModelVersionLink,
    MlflowRunLink,
    link_params,
    mlflow_links,
    mlflow_ui_base_url,
    persist_mlflow_links,
)


@pytest.mark.parametrize(
    ("tracking_uri", "expected"),
    [
        ("http://mlflow:5000", "http://mlflow:5000"),
        ("https://mlflow.example.com/", "https://mlflow.example.com"),
        ("https://proxy.example.com/mlflow/", "https://proxy.example.com/mlflow"),
        ("http://user:secret@mlflow:5000", "http://mlflow:5000"),  # credentials never persisted
        ("http://mlflow:5000/?token=abc#frag", "http://mlflow:5000"),
        ("http://[::1]:5000", "http://[::1]:5000"),
        ("sqlite:////data/mlflow.db", None),  # embedded store: no UI
        ("file:///data/mlruns", None),
        ("/data/mlruns", None),
        ("databricks", None),
        ("", None),
        (None, None),
    ],
)
def test_ui_base_url(tracking_uri: str | None, expected: str | None) -> None:
    assert mlflow_ui_base_url(tracking_uri) == expected


def test_link_params_hold_only_complete_links() -> None:
    assert link_params(tracking_uri="sqlite:///x.db", run_id="r", experiment_id="1") == {}
    only_run = link_params(tracking_uri="http://m:5000", experiment_id="1", run_id="abc")
    assert set(only_run) == {EXPERIMENT_LINK_KEY, RUN_LINK_KEY}
    only_model = link_params(tracking_uri="http://m:5000", model_name="churn", model_version=3)
    assert only_model == {
        MODEL_VERSION_LINK_KEY: {
            "base_url": "http://m:5000",
            "model_name": "churn",
            "model_version": "3",
        }
    }


def test_urls_are_formatted_and_escaped() -> None:
    params = link_params(
        tracking_uri="https://mlflow.example.com/",
        experiment_id="7",
        run_id="0a1b",
        model_name="Churn Model/v#2",
        model_version=4,
    )
    assert MlflowExperimentLink().url_from_params(params[EXPERIMENT_LINK_KEY]) == (
        "https://mlflow.example.com/#/experiments/7"
    )
    assert MlflowRunLink().url_from_params(params[RUN_LINK_KEY]) == (
        "https://mlflow.example.com/#/experiments/7/runs/0a1b"
    )
    assert MlflowModelVersionLink().url_from_params(params[MODEL_VERSION_LINK_KEY]) == (
        "https://mlflow.example.com/#/models/Churn%20Model%2Fv%232/versions/4"
    )


@pytest.mark.parametrize(
    "params",
    [
        None,
        "x",
        {},
        {"base_url": ""},
        {"base_url": "http://m", "experiment_id": "1"},
        {"run_id": "r"},
    ],
)
def test_incomplete_params_give_an_empty_link(params: Any) -> None:
    assert MlflowRunLink().url_from_params(params) == ""


def test_get_link_returns_empty_instead_of_raising() -> None:
    # Outside a running task there is no XCom channel: get_link must answer "" (not raise).
    class Key:
        dag_id, task_id, run_id, map_index, try_number = "d", "t", "r", -1, 1

    for link in mlflow_links():
        assert link.get_link(operator=None, ti_key=Key()) == ""  # type: ignore[arg-type]


def test_link_names_and_keys_are_distinct() -> None:
    links = mlflow_links()
    assert len({link.name for link in links}) == len(links)
    # Parameter keys must not collide with the keys Airflow stores finished URLs under.
    assert {link.key for link in links}.isdisjoint({link.xcom_key for link in links})


# -- the real flow: persist at execute time, Airflow formats and stores the URL -------------


def _xcom(dag_run: Any, task_id: str, key: str) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.scalars(
            select(XComModel).where(
                XComModel.dag_id == dag_run.dag_id,
                XComModel.run_id == dag_run.run_id,
                XComModel.task_id == task_id,
                XComModel.key == key,
            )
        ).first()
        return None if row is None else XComModel.deserialize_value(row)


def _linking_operator_class() -> type:
    from airflow.sdk import BaseOperator

    class LinkingOperator(BaseOperator):
        """Stands in for any operator of ours that knows its MLflow ids at execute time."""

        operator_extra_links = mlflow_links()

        def __init__(self, *, tracking_uri: str, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.tracking_uri = tracking_uri

        def execute(self, context: Any) -> dict[str, Any]:
            return persist_mlflow_links(
                context,
                tracking_uri=self.tracking_uri,
                experiment_id="12",
                run_id="abc123",
                model_name="churn",
                model_version=5,
            )

    return LinkingOperator


def test_links_in_a_real_dag_run(run_dag) -> None:
    from airflow.sdk import DAG

    op_class = _linking_operator_class()
    with DAG(
        dag_id=f"links_{uuid.uuid4().hex[:8]}",
        schedule=None,
        start_date=datetime.datetime(2026, 1, 1),
    ) as dag:
        op_class(task_id="http", tracking_uri="http://user:pw@mlflow.example:5000")
        op_class(task_id="embedded", tracking_uri="sqlite:////tmp/mlflow.db")
        op_class(task_id="no_push", tracking_uri="http://mlflow.example:5000", do_xcom_push=False)
    dag_run = run_dag(dag)
    assert dag_run.state == "success"

    base = "http://mlflow.example:5000"
    assert _xcom(dag_run, "http", "_link_MlflowExperimentLink") == f"{base}/#/experiments/12"
    assert _xcom(dag_run, "http", "_link_MlflowRunLink") == f"{base}/#/experiments/12/runs/abc123"
    assert _xcom(dag_run, "http", "_link_MlflowModelVersionLink") == (
        f"{base}/#/models/churn/versions/5"
    )
    assert _xcom(dag_run, "http", RUN_LINK_KEY)["base_url"] == base  # no credentials stored
    # An embedded store has no UI: no parameters, and the finished links are empty.
    assert _xcom(dag_run, "embedded", RUN_LINK_KEY) is None
    assert _xcom(dag_run, "embedded", "_link_MlflowRunLink") == ""
    # do_xcom_push=False is respected.
    assert _xcom(dag_run, "no_push", RUN_LINK_KEY) is None
    assert _xcom(dag_run, "no_push", "_link_MlflowRunLink") == ""
