"""DriftReportOperator through real Airflow (``dag.test()``), a real MLflow server and moto S3.

The retrain signal is checked the way the CT DAG sees it: rows in Airflow's ``asset_event``
table for ``retrain_asset(model)``, and the queue entry of a DAG scheduled on that asset.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from airflow.sdk import DAG, task
from conftest import stored_xcom

from airflow_mlops.assets import retrain_asset
from airflow_mlops.core.errors import ConfigError
from airflow_mlops.operators.drift import DriftReportOperator
from airflow_mlops.operators.performance import ModelPerformanceOperator

FEATURES = ["amount", "age", "channel", "score"]
FAILURES: dict[str, BaseException] = {}


def record_failure(context: Any) -> None:
    FAILURES[context["dag"].dag_id] = context["exception"]


# -- data and MLflow helpers -----------------------------------------------------------------


def feature_frame(rows: int, seed: int, shifted: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "amount": rng.normal(100.0, 15.0, rows),
            "age": rng.integers(18, 90, rows),
            "channel": rng.choice(["web", "store", "phone"], rows, p=[0.5, 0.3, 0.2]),
            "score": rng.normal(0.0, 1.0, rows),
            "request_id": np.arange(rows),  # not a feature: ignored by default
        }
    )
    if shifted:
        frame["amount"] += 20.0
        frame["channel"] = rng.choice(["web", "store", "phone"], rows, p=[0.1, 0.3, 0.6])
        frame["score"] += 0.8
    return frame


def labelled_frame(rows: int, seed: int) -> pd.DataFrame:
    """Features plus a label that depends on them (so a model can learn it)."""
    frame = feature_frame(rows, seed).drop(columns=["request_id"])
    rng = np.random.default_rng(seed + 100)
    logit = 0.08 * (frame["amount"] - 100) + 1.5 * frame["score"] + rng.normal(0, 0.5, rows)
    frame["label"] = (logit > 0).astype(int)
    return frame


def make_champion(
    tracking_uri: str,
    model_name: str,
    *,
    reference_uri: str | None,
    features: list[str] = FEATURES,
    holdout_metrics: dict[str, float] | None = None,
    train: pd.DataFrame | None = None,
    target: str = "label",
) -> dict[str, Any]:
    """Log a fitted sklearn pipeline with training's tags, register it, alias it champion."""
    import mlflow
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from airflow_mlops.core.lineage import RunContext
    from airflow_mlops.core.mlflow_settings import MlflowSettings, mlflow_environment
    from airflow_mlops.core.registry import register_version

    provider_run = RunContext(dag_id="tests", run_id=model_name, task_id="train")
    train = train if train is not None else labelled_frame(800, seed=11)
    X, y = train[features], train[target]
    numeric = [c for c in features if c != "channel"]
    model = Pipeline(
        [
            (
                "prep",
                ColumnTransformer(
                    [
                        ("num", StandardScaler(), numeric),
                        ("cat", OneHotEncoder(handle_unknown="ignore"), ["channel"]),
                    ]
                ),
            ),
            ("clf", LogisticRegression(max_iter=500)),
        ]
    ).fit(X, y)
    tags = {
        "mlops.features": json.dumps(features),
        "mlops.target": target,
        "mlops.task": "classification",
    }
    if reference_uri:
        tags["mlops.reference.uri"] = reference_uri
    with mlflow_environment(MlflowSettings(tracking_uri=tracking_uri)):
        mlflow.set_experiment("airflow-mlops-monitoring-tests")
        with mlflow.start_run(tags=tags) as run:
            if holdout_metrics:
                mlflow.log_metrics({f"holdout_{k}": v for k, v in holdout_metrics.items()})
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                pip_requirements=["scikit-learn", "skops"],
                signature=infer_signature(X, model.predict(X)),
                serialization_format="cloudpickle",
            )
            # Tagged and registered as the provider's training and registration do, so the
            # champion passes the provenance check every model load makes.
            mlflow.set_tags({**provider_run.as_tags(), "mlops.stage": "training"})
            mlflow.set_tag("mlops.model_uri", info.model_uri)
        client = MlflowClient()
        version = register_version(client, model_name, info.model_uri, context=provider_run)
        client.set_registered_model_alias(model_name, "champion", version.version)
        return {"run_id": run.info.run_id, "version": version.version, "model": model}


def write_parquet(frame: pd.DataFrame, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return str(path)


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


# -- Airflow helpers -------------------------------------------------------------------------


def drift_dag(**operator_kwargs: Any) -> DAG:
    """drift >> after: the downstream task shows what each policy does to the run."""
    with DAG(unique_name("drift"), schedule=None) as dag:
        drift = DriftReportOperator(
            task_id="drift", on_failure_callback=record_failure, **operator_kwargs
        )

        @task
        def after() -> str:
            return "ran"

        drift >> after()
    return dag


def consumer_dag(model_name: str) -> DAG:
    """Stands for the CT DAG: scheduled on the model's retrain asset, with the task id of a
    manual promotion approval."""
    from airflow.providers.standard.operators.empty import EmptyOperator

    with DAG(unique_name("ct"), schedule=[retrain_asset(model_name)]) as dag:

        @task
        def retrain() -> None:
            return None

        retrain() >> EmptyOperator(task_id="approve_promotion")
    return dag


def states(dag_run: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}


def xcom_result(dag_run: Any, task_id: str = "drift") -> dict | None:
    return stored_xcom(dag_run, task_id)


def retrain_events(model_name: str) -> list[dict[str, Any]]:
    """Every event Airflow recorded for the model's retrain asset, oldest first."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    uri = retrain_asset(model_name).uri
    with create_session() as session:
        rows = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.uri == uri)
            .order_by(AssetEvent.id)
        ).all()
        return [
            {
                "source_dag_id": e.source_dag_id,
                "source_run_id": e.source_run_id,
                "extra": dict(e.extra or {}),
                "aliases": [a.name for a in e.source_aliases],
            }
            for e in rows
        ]


def serialize_unpaused(dag: DAG) -> None:
    """Write ``dag`` to the metadata DB, unpaused (paused DAGs are never queued by assets)."""
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from conftest import serialize_dag

    serialize_dag(dag)
    with create_session() as session:
        session.query(DagModel).filter(DagModel.dag_id == dag.dag_id).update({"is_paused": False})


def queued_consumers(dag_id: str) -> int:
    from airflow.models.asset import AssetDagRunQueue
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    with create_session() as session:
        return session.scalar(
            select(func.count())
            .select_from(AssetDagRunQueue)
            .where(AssetDagRunQueue.target_dag_id == dag_id)
        )


@pytest.fixture(scope="module")
def reference_files(tmp_path_factory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("drift-data")
    return {
        "reference": write_parquet(feature_frame(3_000, seed=1), base / "reference.parquet"),
        "same": write_parquet(feature_frame(3_000, seed=2), base / "current_same.parquet"),
        "shifted": write_parquet(
            feature_frame(3_000, seed=3, shifted=True), base / "shifted.parquet"
        ),
    }


@pytest.fixture
def champion(mlflow_conn, mlflow_server, reference_files) -> dict[str, Any]:
    name = unique_name("churn")
    facts = make_champion(mlflow_server, name, reference_uri=reference_files["reference"])
    return {"name": name, **facts}


# -- parse time ------------------------------------------------------------------------------


def test_parse_time_checks_and_declared_assets():
    op = DriftReportOperator(task_id="d", model_name="m1", current_uri="{{ params.uri }}")
    assert [a.uri for a in op.inlets] == [retrain_asset("m1").uri]
    assert [a.name for a in op.outlets] == ["mlops_retrain_alias__m1"]
    assert {"current_uri", "reference_uri", "columns", "on_drift", "sample_rows"} <= set(
        op.template_fields
    )
    with pytest.raises(ConfigError, match="on_drift"):
        DriftReportOperator(task_id="d", model_name="m", current_uri="x", on_drift="retrain")
    with pytest.raises(ConfigError, match="branch"):
        DriftReportOperator(task_id="d", model_name="m", current_uri="x", on_drift="branch")
    with pytest.raises(ConfigError, match="model_name cannot be a template"):
        DriftReportOperator(task_id="d", model_name="{{ params.m }}", current_uri="x")
    # A templated policy waits for rendering.
    DriftReportOperator(task_id="d", model_name="m", current_uri="x", on_drift="{{ params.p }}")


@pytest.mark.parametrize(
    ("operator_class", "field", "required"),
    [
        (DriftReportOperator, "on_drift", {"current_uri": "x"}),
        (ModelPerformanceOperator, "on_decay", {"labels_uri": "x"}),
    ],
)
def test_both_monitoring_operators_share_the_policy_checks(operator_class, field, required):
    """One helper checks the policies of both operators, naming each one's own field."""
    assert operator_class.policy_field == field
    op = operator_class(task_id="t", model_name="m", **required, **{field: "{{ params.p }}"})
    assert "on_empty" in op.template_fields and field in op.template_fields
    assert op.ui_color == "#f7e3d5"
    setattr(op, field, "retrain")  # what a template could render to
    with pytest.raises(ConfigError, match=rf"^{field} must be one of"):
        op.checked_policies()
    setattr(op, field, "skip")
    op.on_empty = "ignore"
    with pytest.raises(ConfigError, match=r"^on_empty must be one of"):
        op.checked_policies()
    op.on_empty, op.debounce_seconds = "skip", "-1"
    with pytest.raises(ConfigError, match="debounce_seconds"):
        op.checked_policies()
    op.debounce_seconds = "60"
    assert op.checked_policies() == "skip"
    with pytest.raises(ConfigError, match="on_empty must be one of"):
        operator_class(task_id="t", model_name="m", **required, on_empty="never")
    with pytest.raises(ConfigError, match=f"{field}='branch' needs"):
        operator_class(task_id="t", model_name="m", **required, **{field: "branch"})


def test_mlflow_report_folder_never_navigates_on_a_dot_dot_run_id():
    """Airflow accepts a run id of '..' with [core] allow_double_dot_in_ids: the report folder
    on the champion's run must still be one folder per run (the monitoring copy of path_safe
    kept '..'; the one in operators/base.py does not)."""
    from types import SimpleNamespace

    op = DriftReportOperator(task_id="d", model_name="m", current_uri="x")
    ti = SimpleNamespace(dag_id="dag", run_id="..", task_id="d", map_index=-1, try_number=1)
    folder = op.mlflow_artifact_folder({"ti": ti}, "drift")
    assert folder == "monitoring/drift/dag/__/d"
    assert not {".", ".."} & set(folder.split("/"))


# -- verdicts and the signal -----------------------------------------------------------------


def test_no_drift_writes_reports_attaches_them_and_emits_nothing(
    run_dag, champion, reference_files, tmp_path, mlflow_server
):
    from mlflow.tracking import MlflowClient

    dag = drift_dag(
        model_name=champion["name"],
        current_uri=reference_files["same"],
        report_folder_uri=str(tmp_path / "reports"),
    )
    dag_run = run_dag(dag)

    assert states(dag_run) == {"drift": "success", "after": "success"}
    result = xcom_result(dag_run)
    assert result["dataset"]["drifted"] is False and result["drifted_columns"] == []
    assert result["reference_uri"] == reference_files["reference"]  # from the champion's tag
    assert result["champion_version"] == str(champion["version"])
    assert result["retrain_signal"]["emit"] is False
    summary = json.loads(Path(result["summary_uri"]).read_text())
    assert list(summary["columns"]) == FEATURES  # the champion's features, not request_id
    assert Path(result["report_uri"]).read_text().startswith("\n    <!DOCTYPE html>")
    assert retrain_events(champion["name"]) == []

    client = MlflowClient(tracking_uri=mlflow_server)
    folder = f"monitoring/drift/{dag.dag_id}"
    names = [a.path for a in client.list_artifacts(champion["run_id"], folder)]
    assert len(names) == 1  # one folder per DAG run
    files = {
        a.path.rsplit("/", 1)[-1]
        for a in client.list_artifacts(champion["run_id"], names[0] + "/drift")
    }
    assert files == {"drift_report.html", "drift_summary.json"}


def test_drift_emits_the_retrain_asset_event_and_queues_the_ct_dag(
    run_dag, champion, reference_files, mlflow_server
):
    from mlflow.tracking import MlflowClient

    from airflow_mlops.core.retrain_signal import TAG_LAST_RETRAIN_SIGNAL

    consumer = consumer_dag(champion["name"])
    serialize_unpaused(consumer)
    dag = drift_dag(model_name=champion["name"], current_uri=reference_files["shifted"])
    dag_run = run_dag(dag)

    assert states(dag_run) == {"drift": "success", "after": "success"}
    result = xcom_result(dag_run)
    assert sorted(result["drifted_columns"]) == ["amount", "channel", "score"]
    assert result["dataset"]["drifted"] is True
    assert result["retrain_signal"]["emit"] is True

    events = retrain_events(champion["name"])
    assert len(events) == 1
    event = events[0]
    assert event["source_dag_id"] == dag.dag_id and event["source_run_id"] == dag_run.run_id
    assert event["aliases"] == [f"mlops_retrain_alias__{champion['name']}"]
    assert event["extra"]["trigger"] == "drift"
    assert sorted(event["extra"]["drifted_columns"]) == ["amount", "channel", "score"]
    assert event["extra"]["reason"].startswith("data drift: 3/4 columns drifted")
    # The common part of the event comes from RetrainSignalOperator.finish, for both operators.
    assert event["extra"]["model_name"] == champion["name"]
    assert event["extra"]["champion_version"] == result["champion_version"]
    assert event["extra"]["report_uri"] == result["report_uri"]
    assert event["extra"]["summary_uri"] == result["summary_uri"]
    assert queued_consumers(consumer.dag_id) == 1

    tags = MlflowClient(tracking_uri=mlflow_server).get_registered_model(champion["name"]).tags
    assert json.loads(tags[TAG_LAST_RETRAIN_SIGNAL])["run_id"] == dag_run.run_id


def test_debounce_holds_a_second_signal_inside_the_window(run_dag, champion, reference_files):
    first = run_dag(drift_dag(model_name=champion["name"], current_uri=reference_files["shifted"]))
    assert xcom_result(first)["retrain_signal"]["emit"] is True

    second = run_dag(drift_dag(model_name=champion["name"], current_uri=reference_files["shifted"]))

    assert states(second)["drift"] == "success"
    signal = xcom_result(second)["retrain_signal"]
    assert signal["emit"] is False and "debounced" in signal["reason"]
    assert len(retrain_events(champion["name"])) == 1

    # With no window the next drifted run signals again.
    third = run_dag(
        drift_dag(
            model_name=champion["name"],
            current_uri=reference_files["shifted"],
            debounce_seconds="0",
        )
    )
    assert xcom_result(third)["retrain_signal"]["emit"] is True
    assert len(retrain_events(champion["name"])) == 2


@pytest.mark.parametrize("approval_state", [None, "deferred"])
def test_no_signal_while_a_ct_run_is_active(run_dag, champion, reference_files, approval_state):
    """A queued or running CT run holds the signal back, unless all it does is wait for a
    human to approve a promotion: a newer challenger supersedes that request."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.state import DagRunState

    ct = consumer_dag(champion["name"])
    serialize_unpaused(ct)
    from airflow.utils.session import create_session
    from airflow.utils.types import DagRunTriggeredByType, DagRunType

    with create_session() as session:
        from airflow.models.dagbag import DBDagBag

        serialized = DBDagBag().get_latest_version_of_dag(ct.dag_id, session=session)
        now = pd.Timestamp.now(tz="UTC").to_pydatetime()
        active = serialized.create_dagrun(
            run_id=f"manual__{uuid.uuid4().hex}",
            logical_date=now,
            data_interval=(now, now),
            run_after=now,
            run_type=DagRunType.MANUAL,
            triggered_by=DagRunTriggeredByType.TEST,
            state=DagRunState.RUNNING,
            session=session,
        )
        if approval_state is not None:
            session.query(TaskInstance).filter_by(
                dag_id=ct.dag_id, run_id=active.run_id, task_id="approve_promotion"
            ).update({"state": approval_state})

    dag_run = run_dag(
        drift_dag(
            model_name=champion["name"],
            current_uri=reference_files["shifted"],
            ct_dag_id=ct.dag_id,
        )
    )

    signal = xcom_result(dag_run)["retrain_signal"]
    if approval_state is None:
        assert signal["emit"] is False and "1 CT run(s) queued or running" in signal["reason"]
        assert retrain_events(champion["name"]) == []
    else:
        assert signal["emit"] is True, signal
        assert len(retrain_events(champion["name"])) == 1


# -- policies --------------------------------------------------------------------------------


def test_on_drift_fail_fails_the_task_with_the_reason(run_dag, champion, reference_files):
    dag = drift_dag(
        model_name=champion["name"], current_uri=reference_files["shifted"], on_drift="fail"
    )
    dag_run = run_dag(dag)

    assert states(dag_run)["drift"] == "failed"
    assert "data drift: 3/4 columns drifted" in str(FAILURES[dag.dag_id])
    assert xcom_result(dag_run)["dataset"]["drifted"] is True  # still inspectable
    assert retrain_events(champion["name"]) == []


def test_on_drift_skip_skips_downstream(run_dag, champion, reference_files):
    dag_run = run_dag(
        drift_dag(
            model_name=champion["name"], current_uri=reference_files["shifted"], on_drift="skip"
        )
    )
    assert states(dag_run) == {"drift": "skipped", "after": "skipped"}
    assert retrain_events(champion["name"]) == []


def test_on_drift_skip_without_drift_succeeds(run_dag, champion, reference_files):
    dag_run = run_dag(
        drift_dag(model_name=champion["name"], current_uri=reference_files["same"], on_drift="skip")
    )
    assert states(dag_run) == {"drift": "success", "after": "success"}


def test_on_drift_branch_follows_the_drift_branch(run_dag, champion, reference_files):
    def branch_dag(current_uri: str) -> DAG:
        with DAG(unique_name("branch"), schedule=None) as dag:
            drift = DriftReportOperator(
                task_id="drift",
                model_name=champion["name"],
                current_uri=current_uri,
                on_drift="branch",
                drift_task_ids=["alert"],
                no_drift_task_ids="publish",
            )

            @task
            def alert() -> str:
                return "alert"

            @task
            def publish() -> str:
                return "publish"

            drift >> [alert(), publish()]
        return dag

    drifted = run_dag(branch_dag(reference_files["shifted"]))
    assert states(drifted) == {"drift": "success", "alert": "success", "publish": "skipped"}
    assert xcom_result(drifted)["dataset"]["drifted"] is True

    steady = run_dag(branch_dag(reference_files["same"]))
    assert states(steady) == {"drift": "success", "alert": "skipped", "publish": "success"}
    assert retrain_events(champion["name"]) == []


# -- bad input -------------------------------------------------------------------------------


def test_schema_drift_fails_the_task_naming_the_columns(run_dag, champion, tmp_path):
    from airflow_mlops.core.errors import SchemaDriftError

    broken = feature_frame(500, seed=4).drop(columns=["age"])
    broken["score"] = broken["score"].astype(str)
    dag = drift_dag(
        model_name=champion["name"], current_uri=write_parquet(broken, tmp_path / "broken.parquet")
    )
    dag_run = run_dag(dag)

    assert states(dag_run)["drift"] == "failed"
    error = FAILURES[dag.dag_id]
    assert isinstance(error, SchemaDriftError)
    assert "missing from current: ['age']" in str(error)
    assert "'score' (float -> string)" in str(error)
    assert retrain_events(champion["name"]) == []


def test_empty_current_batch_fails_or_skips(run_dag, champion, tmp_path):
    empty = write_parquet(feature_frame(10, seed=5).iloc[0:0], tmp_path / "empty.parquet")

    failed = drift_dag(model_name=champion["name"], current_uri=empty)
    assert states(run_dag(failed))["drift"] == "failed"
    assert "no rows" in str(FAILURES[failed.dag_id])

    skipped = run_dag(drift_dag(model_name=champion["name"], current_uri=empty, on_empty="skip"))
    assert states(skipped) == {"drift": "skipped", "after": "skipped"}


def test_no_champion_and_no_reference_skips(run_dag, mlflow_conn, reference_files):
    dag_run = run_dag(
        drift_dag(model_name=unique_name("nobody"), current_uri=reference_files["same"])
    )
    assert states(dag_run)["drift"] == "skipped"


def test_explicit_reference_without_champion(run_dag, mlflow_conn, reference_files):
    model = unique_name("first")
    dag_run = run_dag(
        drift_dag(
            model_name=model,
            current_uri=reference_files["shifted"],
            reference_uri=reference_files["reference"],
            columns=["amount", "age"],
            column_thresholds={"amount": "2.0"},  # rendered templates arrive as text
        )
    )
    result = xcom_result(dag_run)
    assert result["champion_version"] is None and result["mlflow_run_id"] is None
    summary = json.loads(Path(result["summary_uri"]).read_text())
    assert list(summary["columns"]) == ["amount", "age"]
    assert summary["columns"]["amount"]["threshold"] == 2.0
    assert result["drifted_columns"] == [] and result["retrain_signal"]["emit"] is False


# -- S3 --------------------------------------------------------------------------------------


def test_s3_inputs_and_reports(run_dag, champion, s3_bucket, s3_server):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    for name, frame in {
        "ref.parquet": feature_frame(2_000, seed=1),
        "cur.parquet": feature_frame(2_000, seed=3, shifted=True),
    }.items():
        s3.put_object(Bucket=s3_bucket, Key=f"data/{name}", Body=frame.to_parquet(index=False))

    dag_run = run_dag(
        drift_dag(
            model_name=champion["name"],
            reference_uri=f"s3://{s3_bucket}/data/ref.parquet",
            current_uri=f"s3://{s3_bucket}/data/cur.parquet",
            report_folder_uri=f"s3://{s3_bucket}/reports/drift",
            sample_rows=1_000,
        )
    )

    result = xcom_result(dag_run)
    assert result["report_uri"] == f"s3://{s3_bucket}/reports/drift/drift_report.html"
    assert result["sampled"] == {"reference": True, "current": True}
    summary = json.loads(
        s3.get_object(Bucket=s3_bucket, Key="reports/drift/drift_summary.json")["Body"].read()
    )
    assert summary["sampling"]["reference"]["sampled_rows"] == 1_000
    html = s3.get_object(Bucket=s3_bucket, Key="reports/drift/drift_report.html")["Body"].read()
    assert b"uniform sample of 1,000 of 2,000 rows" in html


def test_s3_prefix_of_daily_partitions_is_compared_within_its_window(
    run_dag, champion, s3_bucket, s3_server
):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    days = {
        "2026-12-01": feature_frame(800, seed=2),
        "2026-12-02": feature_frame(800, seed=4),
        "2026-12-03": feature_frame(800, seed=3, shifted=True),  # after the window's end
    }
    for day, frame in days.items():
        key = f"features/dt={day}/part-0.parquet"
        s3.put_object(Bucket=s3_bucket, Key=key, Body=frame.to_parquet(index=False))
    s3.put_object(Bucket=s3_bucket, Key="features/_SUCCESS", Body=b"")

    dag_run = run_dag(
        drift_dag(
            model_name=champion["name"],
            current_uri=f"s3://{s3_bucket}/features/",
            window={"last_partitions": 2},
            window_end="{{ '2026-12-02' }}",
            report_folder_uri=f"s3://{s3_bucket}/reports/prefix",
        )
    )

    assert states(dag_run) == {"drift": "success", "after": "success"}
    result = xcom_result(dag_run)
    assert result["dataset"]["drifted"] is False, result  # the shifted day is outside
    summary = json.loads(
        s3.get_object(Bucket=s3_bucket, Key="reports/prefix/drift_summary.json")["Body"].read()
    )
    assert summary["sampling"]["current"]["rows"] == 1_600  # two days of 800 rows
    assert list(summary["columns"]) == FEATURES  # the champion's features, not dt
