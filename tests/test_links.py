"""MLflow extra links: URL building, parameter persistence, and the real Airflow link flow."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import pytest
from conftest import stored_xcom

from airflow_mlops.links.mlflow import (
    EXPERIMENT_LINK_KEY,
    MODEL_VERSION_LINK_KEY,
    RUN_LINK_KEY,
    MlflowExperimentLink,
    MlflowModelVersionLink,
    MlflowRunLink,
    link_params,
    mlflow_links,
    mlflow_ui_url,
    persist_mlflow_links,
)
from airflow_mlops.links.urls import mlflow_page_url, mlflow_ui_base_url

UI_URL_ENV = "AIRFLOW__MLOPS__MLFLOW_UI_URL"


@pytest.fixture(autouse=True)
def _no_configured_ui_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start without ``[mlops] mlflow_ui_url``; the ones about it set it."""
    monkeypatch.delenv(UI_URL_ENV, raising=False)


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


def test_mlflow_page_url_escapes_ids_and_refuses_half_links() -> None:
    base = "http://m:5000"
    assert mlflow_page_url(base, ("models", "a b/c#d"), ("versions", 2)) == (
        "http://m:5000/#/models/a%20b%2Fc%23d/versions/2"
    )
    assert mlflow_page_url(base, ("experiments", "7")) == "http://m:5000/#/experiments/7"
    assert mlflow_page_url(None, ("experiments", "7")) is None
    assert mlflow_page_url(base, ("experiments", "7"), ("runs", None)) is None
    assert mlflow_page_url(base, ("experiments", ""), ("runs", "r")) is None


def test_links_and_the_mlops_page_build_the_same_urls() -> None:
    """One URL builder: a task's links and the page's links to the same ids are equal."""
    from airflow_mlops.plugins import model_overview as page

    ids = {"experiment_id": "7", "run_id": "0a/1b", "model_name": "Churn #2", "model_version": 4}
    params = link_params(tracking_uri="https://mlflow.example.com/", **ids)
    base = "https://mlflow.example.com"
    assert MlflowRunLink().url_from_params(params[RUN_LINK_KEY]) == page.run_url(base, "7", "0a/1b")
    assert MlflowModelVersionLink().url_from_params(params[MODEL_VERSION_LINK_KEY]) == (
        page.version_url(base, "Churn #2", "4")
    )
    assert page.model_url(base, "Churn #2") == "https://mlflow.example.com/#/models/Churn%20%232"
    assert page.run_url(base, None, "r") is None


@pytest.mark.parametrize(
    ("configured", "tracking_uri", "expected"),
    [
        # docker-compose: the workers reach mlflow:5000, the browser localhost:5000.
        ("http://localhost:5000/", "http://mlflow:5000", "http://localhost:5000"),
        # An embedded store has no UI of its own, but a configured one is linked.
        ("https://mlflow.example.com", "sqlite:////data/mlflow.db", "https://mlflow.example.com"),
        # Cleaned like a tracking URI: credentials, query and fragment never persisted.
        ("http://user:pw@ui.example:8443/mlflow/?t=1#f", "http://mlflow:5000", None),
        # Unset or empty: the tracking URI's own UI, as before.
        (None, "http://mlflow:5000", "http://mlflow:5000"),
        ("", "http://mlflow:5000", "http://mlflow:5000"),
        (None, "sqlite:////data/mlflow.db", None),
    ],
)
def test_configured_mlflow_ui_url_wins_over_the_tracking_uri(
    monkeypatch: pytest.MonkeyPatch, configured: str | None, tracking_uri: str, expected: str | None
) -> None:
    if configured is not None:
        monkeypatch.setenv(UI_URL_ENV, configured)
    if configured and "user:pw" in configured:
        expected = "http://ui.example:8443/mlflow"
    assert mlflow_ui_url(tracking_uri) == expected
    params = link_params(tracking_uri=tracking_uri, experiment_id="1", run_id="r")
    assert params.get(RUN_LINK_KEY, {}).get("base_url") == expected


def test_a_configured_ui_url_that_is_not_http_is_ignored_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(UI_URL_ENV, "localhost:5000")
    with caplog.at_level("WARNING", logger="airflow_mlops.links.mlflow"):
        assert mlflow_ui_url("http://mlflow:5000") == "http://mlflow:5000"
    assert "Ignoring [mlops] mlflow_ui_url = 'localhost:5000'" in caplog.text


def test_the_mlops_page_reads_the_ui_url_through_the_links_function() -> None:
    """No second reader of the option: the page imports the links' function."""
    import inspect

    from airflow_mlops.plugins import mlops_app

    source = inspect.getsource(mlops_app)
    assert "mlflow_ui_url(" in source
    assert '"mlflow_ui_url"' not in source and "_ui_base_url" not in source


def test_get_link_lets_real_errors_through(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside a task, a failing XCom channel is an error to see, not an empty link."""
    from airflow.sdk.execution_time import task_runner

    class BrokenComms:
        def send(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("API server unreachable")

    class Key:
        dag_id, task_id, run_id, map_index, try_number = "d", "t", "r", -1, 1

    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", BrokenComms(), raising=False)
    for link in mlflow_links():
        with pytest.raises(RuntimeError, match="API server unreachable"):
            link.get_link(operator=None, ti_key=Key())  # type: ignore[arg-type]


def test_link_names_and_keys_are_distinct() -> None:
    links = mlflow_links()
    assert len({link.name for link in links}) == len(links)
    # Parameter keys must not collide with the keys Airflow stores finished URLs under.
    assert {link.key for link in links}.isdisjoint({link.xcom_key for link in links})


# -- the real flow: persist at execute time, Airflow formats and stores the URL -------------


def _xcom(dag_run: Any, task_id: str, key: str, map_index: int = -1) -> Any:
    return stored_xcom(dag_run, task_id, key, map_index)


def _links_dag(prefix: str) -> Any:
    """A fresh DAG (use as a context manager) for the operators of one test."""
    from airflow.sdk import DAG

    return DAG(
        dag_id=f"{prefix}_{uuid.uuid4().hex[:8]}",
        schedule=None,
        start_date=datetime.datetime(2026, 1, 1),
    )


def _linking_operator_class() -> type:
    from airflow.sdk import BaseOperator

    class LinkingOperator(BaseOperator):
        """Stands in for any operator of ours that knows its MLflow ids at execute time.

        ``fail_before_links``: fail before persisting anything (e.g. the data was missing);
        ``model_version=None``: a task with a run but no model version (e.g. training).
        """

        operator_extra_links = mlflow_links()

        def __init__(
            self,
            *,
            tracking_uri: str,
            model_version: int | None = 5,
            fail_before_links: bool = False,
            **kwargs: Any,
        ) -> None:
            super().__init__(**kwargs)
            self.tracking_uri = tracking_uri
            self.model_version = model_version
            self.fail_before_links = fail_before_links

        def execute(self, context: Any) -> dict[str, Any]:
            if self.fail_before_links:
                raise ValueError("failed before persisting the links")
            return persist_mlflow_links(
                context,
                tracking_uri=self.tracking_uri,
                experiment_id="12",
                run_id="abc123",
                model_name="churn" if self.model_version else None,
                model_version=self.model_version,
            )

    return LinkingOperator


def test_links_in_a_real_dag_run(run_dag) -> None:
    op_class = _linking_operator_class()
    with _links_dag("links") as dag:
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


def test_links_use_the_configured_mlflow_ui_url_in_a_real_dag_run(
    run_dag, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docker-compose: the workers use http://mlflow:5000, the browser http://localhost:5000."""
    monkeypatch.setenv(UI_URL_ENV, "http://localhost:5000")
    op_class = _linking_operator_class()
    with _links_dag("links_ui") as dag:
        op_class(task_id="compose", tracking_uri="http://mlflow:5000")
    dag_run = run_dag(dag)
    assert dag_run.state == "success"
    assert _xcom(dag_run, "compose", "_link_MlflowRunLink") == (
        "http://localhost:5000/#/experiments/12/runs/abc123"
    )
    assert _xcom(dag_run, "compose", "_link_MlflowModelVersionLink") == (
        "http://localhost:5000/#/models/churn/versions/5"
    )


def test_links_never_persisted_are_empty_and_quiet(
    run_dag, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """No "XCom not found" error in the task logs for links a task did not persist."""
    op_class = _linking_operator_class()
    with _links_dag("links_quiet") as dag:
        http = "http://mlflow.example:5000"
        op_class(task_id="failed_first", tracking_uri=http, fail_before_links=True)
        op_class(task_id="run_only", tracking_uri=http, model_version=None)
        op_class(task_id="embedded", tracking_uri="sqlite:////tmp/mlflow.db")
        # A mapped task whose index 1 fails before persisting while index 0 persisted.
        op_class.partial(task_id="mapped", tracking_uri=http).expand(
            fail_before_links=[False, True]
        )
    capfd.readouterr()
    dag_run = run_dag(dag)
    # Airflow's logs go to the captured output or to the logging handlers: read both.
    logs = "".join(capfd.readouterr()) + caplog.text

    assert "end task task_id=mapped" in logs  # the task logs were captured
    assert "XCom not found" not in logs
    assert "Failed to push an xcom for task operator extra link" not in logs
    base = "http://mlflow.example:5000"
    for link in ("Experiment", "Run", "ModelVersion"):
        assert _xcom(dag_run, "failed_first", f"_link_Mlflow{link}Link") == ""
        assert _xcom(dag_run, "embedded", f"_link_Mlflow{link}Link") == ""
        assert _xcom(dag_run, "mapped", f"_link_Mlflow{link}Link", map_index=1) == ""
    assert (
        _xcom(dag_run, "run_only", "_link_MlflowRunLink") == f"{base}/#/experiments/12/runs/abc123"
    )
    assert _xcom(dag_run, "run_only", "_link_MlflowModelVersionLink") == ""
    assert _xcom(dag_run, "mapped", "_link_MlflowModelVersionLink", map_index=0) == (
        f"{base}/#/models/churn/versions/5"
    )
