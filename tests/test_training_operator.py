"""TrainModelOperator through Airflow's real task runner (dag.test) and the MLflow server."""

from __future__ import annotations

import json
import os
import signal
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import serialize_dag
from mlflow.tracking import MlflowClient
from sklearn.base import BaseEstimator, ClassifierMixin

from airflow_mlops.core.errors import ConfigError
from airflow_mlops.core.lineage import (
    TAG_DAG_ID,
    TAG_ERROR,
    TAG_IDEMPOTENCY_KEY,
    TAG_MODEL_URI,
    TAG_RUN_ID,
    TAG_TASK_ID,
)
from airflow_mlops.operators.training import TrainModelOperator

RESULT_KEYS = {
    "run_id",
    "experiment_id",
    "model_uri",
    "holdout_uri",
    "holdout_sha256",
    "reference_uri",
    "task",
    "metrics",
    "best_params",
    "idempotency_key",
    "reused",
}
COLLECTED: list[dict] = []


@pytest.fixture(scope="module")
def train_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    rng = np.random.default_rng(3)
    n = 400
    frame = pd.DataFrame(
        {
            "age": rng.integers(18, 80, n),
            "income": rng.normal(50, 10, n),
            "plan": rng.choice(["basic", "pro"], n),
        }
    )
    frame["churned"] = ((frame["age"] < 35) ^ (frame["plan"] == "pro")).astype(int)
    path = tmp_path_factory.mktemp("op") / "customers.parquet"
    frame.to_parquet(path, index=False)
    return str(path)


def expected_holdout_rows(train_uri: str, fraction: float, seed: int = 42) -> int:
    """Rows the hash split holds out: every column here is a feature or the target."""
    from airflow_mlops.core.stable_split import holdout_mask

    return int(holdout_mask(pd.read_parquet(train_uri), fraction, seed).sum())


@pytest.fixture
def experiment_name() -> str:
    return f"op-{uuid.uuid4().hex[:10]}"


def build_dag(dag_id: str, **operator_kwargs):
    from airflow.sdk import DAG, task

    COLLECTED.clear()
    cls = operator_kwargs.pop("operator_class", TrainModelOperator)
    with DAG(dag_id, schedule=None, params={"fraction": "0.25"}) as dag:
        trained = cls(task_id="train", **operator_kwargs)

        @task
        def collect(result: dict) -> None:
            COLLECTED.append(json.loads(json.dumps(result)))  # must be plain JSON

        collect(trained.output)
    return dag


def test_operator_trains_xgboost_and_returns_a_small_json_result(
    mlflow_conn, mlflow_server, run_dag, train_uri, experiment_name
):
    dag = build_dag(
        "train_xgb",
        train_uri="{{ dag_run.conf['data'] }}",
        target="churned",
        experiment_name=experiment_name,
        model_name="churn",
        estimator="xgboost.XGBClassifier",
        estimator_params={"n_estimators": 30, "max_depth": 3, "n_jobs": 1},
        holdout_fraction="{{ params.fraction }}",
        search={"method": "grid", "space": {"max_depth": [2, 3]}, "cv": 2},
    )
    dag_run = run_dag(dag, data=train_uri)
    assert dag_run.state == "success"

    (result,) = COLLECTED
    assert set(result) == RESULT_KEYS
    assert result["reused"] is False and result["best_params"]["max_depth"] in (2, 3)
    assert result["metrics"]["accuracy"] > 0.9
    # The rendered "0.25", by row hash: about 100 of 400 rows, exactly those the hash picks.
    assert len(pd.read_parquet(result["holdout_uri"])) == expected_holdout_rows(train_uri, 0.25)
    assert len(json.dumps(result)) < 2000

    run = MlflowClient(mlflow_server).get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags[TAG_DAG_ID] == "train_xgb"
    assert run.data.tags[TAG_TASK_ID] == "train"
    assert run.data.tags[TAG_RUN_ID] == dag_run.run_id
    assert run.data.tags[TAG_MODEL_URI] == result["model_uri"]


class CrashAfterTraining(TrainModelOperator):
    """Simulates a worker dying after the MLflow run finished, before the task succeeded."""

    def execute(self, context):
        result = super().execute(context)
        if context["ti"].try_number == 1:
            raise RuntimeError("worker lost after training")
        return result


@pytest.mark.parametrize("configured", [True, False])
def test_holdout_goes_under_the_configured_artifacts_root_never_next_to_the_data(
    configured, mlflow_conn, run_dag, train_uri, experiment_name, tmp_path, monkeypatch
):
    """A configured ``[mlops] artifacts_uri`` (often shared S3), else the Airflow home: never
    the data's folder, which may be someone else's bucket, read-only or not visible to the
    worker that evaluates (issue #14, item 5)."""
    root = tmp_path / "artifacts-root"
    if configured:
        monkeypatch.setenv("AIRFLOW__MLOPS__ARTIFACTS_URI", str(root))
    else:
        monkeypatch.delenv("AIRFLOW__MLOPS__ARTIFACTS_URI", raising=False)
    dag_id = f"train_root_{configured}_{uuid.uuid4().hex[:6]}"
    dag = build_dag(
        dag_id,
        train_uri=train_uri,
        target="churned",
        experiment_name=experiment_name,
        estimator="sklearn.linear_model.LogisticRegression",
    )
    assert run_dag(dag).state == "success"
    (result,) = COLLECTED
    holdout = Path(result["holdout_uri"])
    if configured:
        assert holdout.is_relative_to(root / dag_id), holdout
        assert holdout.parent.name == "training"
    else:
        home = Path(os.environ["AIRFLOW_HOME"]) / "mlops_artifacts" / "training"
        assert holdout.is_relative_to(home), holdout
    assert not holdout.is_relative_to(Path(train_uri).parent), holdout
    assert len(pd.read_parquet(holdout)) == expected_holdout_rows(train_uri, 0.25)


def test_a_retry_reuses_the_finished_run_of_the_failed_try(
    mlflow_conn, mlflow_server, run_dag, train_uri, experiment_name
):
    from datetime import timedelta

    dag = build_dag(
        "train_retry",
        operator_class=CrashAfterTraining,
        train_uri=train_uri,
        target="churned",
        experiment_name=experiment_name,
        estimator="sklearn.linear_model.LogisticRegression",
        retries=1,
        retry_delay=timedelta(seconds=0),
    )
    dag_run = run_dag(dag)
    assert dag_run.state == "success"
    (result,) = COLLECTED
    assert result["reused"] is True

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name(experiment_name)
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{TAG_IDEMPOTENCY_KEY}` = '{result['idempotency_key']}'",
    )
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert runs[0].info.run_id == result["run_id"]


class SelfTerminatingClassifier(ClassifierMixin, BaseEstimator):
    """Sends SIGTERM to its own process mid-fit, as Airflow does to a task it kills."""

    def fit(self, X, y):
        os.kill(os.getpid(), signal.SIGTERM)
        self.classes_ = np.unique(y)
        return self

    def predict(self, X):
        return np.full(len(X), self.classes_[0])


def build_self_terminating() -> SelfTerminatingClassifier:
    return SelfTerminatingClassifier()


def test_sigterm_marks_the_run_failed_not_running_or_finished(
    mlflow_conn, mlflow_server, run_dag, train_uri, experiment_name
):
    previous_handler = signal.getsignal(signal.SIGTERM)
    dag = build_dag(
        "train_killed",
        train_uri=train_uri,
        target="churned",
        experiment_name=experiment_name,
        estimator=build_self_terminating,
    )
    try:
        dag_run = run_dag(dag)
    finally:
        # The task runner installed its own SIGTERM handler in this (pytest) process.
        signal.signal(signal.SIGTERM, previous_handler)
    assert dag_run.state == "failed"

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name(experiment_name)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FAILED"
    # on_kill set the stop flag, so training stopped at its next checkpoint instead of
    # finishing the run: the last error written is the interruption.
    assert run.data.tags[TAG_ERROR].startswith("TrainingInterrupted")
    assert TAG_MODEL_URI not in run.data.tags


def test_on_kill_alone_fails_the_active_run(mlflow_conn, mlflow_server, experiment_name):
    """If the supervisor SIGKILLs right after SIGTERM, on_kill's own write must suffice."""
    client = MlflowClient(mlflow_server)
    run = client.create_run(client.create_experiment(experiment_name))
    op = TrainModelOperator(
        task_id="t", train_uri="unused.parquet", target="y", experiment_name=experiment_name
    )
    op._remember_run(run.info.run_id)
    op.on_kill()
    killed = client.get_run(run.info.run_id)
    assert killed.info.status == "FAILED"
    assert "on_kill" in killed.data.tags[TAG_ERROR]


def test_templated_values_are_converted_or_refused_naming_the_field(train_uri):
    op = TrainModelOperator(
        task_id="t",
        train_uri=train_uri,
        target="churned",
        experiment_name="e",
        holdout_fraction="0.3",
        seed="7",
        search={"method": "random", "space": {"C": [0.1, 1.0]}, "n_iter": 2},
        window='{"last_partitions": 2, "max_rows": 50}',
        window_end="",
        key=["customer_id"],
    )
    config = op.training_config()
    assert (config.split.holdout_fraction, config.split.seed) == (0.3, 7)
    assert config.search.n_iter == 2
    assert (config.window.last_partitions, config.window.max_rows) == (2, 50)
    assert config.window_end is None and config.split.key == ("customer_id",)

    for field, value in (
        ("seed", "seven"),
        ("holdout_fraction", "x"),
        ("window", "last week"),
        ("window", '{"last_partitions": 0}'),
    ):
        op = TrainModelOperator(
            task_id="t",
            train_uri=train_uri,
            target="churned",
            experiment_name="e",
            **{field: value},
        )
        with pytest.raises(ConfigError, match=field):
            op.training_config()
    op = TrainModelOperator(
        task_id="t", train_uri=train_uri, target="churned", experiment_name="e", search={"grid": 1}
    )
    with pytest.raises(ConfigError, match="search has unknown field"):
        op.training_config()


def test_every_parameter_a_user_sets_from_the_dag_is_templated():
    import inspect

    params = set(inspect.signature(TrainModelOperator.__init__).parameters) - {"self", "kwargs"}
    # ``training`` is unpacked into the templated fields below it.
    assert params - {"training"} <= set(TrainModelOperator.template_fields)


def test_docs_page_exists():
    page = Path(__file__).parents[1] / "docs" / "operators" / "training.md"
    text = page.read_text()
    assert "xgboost.XGBClassifier" in text and "mlops.holdout.sha256" in text


def test_clear_and_rerun_after_the_data_file_is_fixed_retrains(
    mlflow_conn, mlflow_server, tmp_path, experiment_name, monkeypatch
):
    """Issue #14 item 7, through Airflow: the same DAG run (same logical date, so the same
    dag/run/task key) run again after its data file was fixed trains a new model instead of
    returning the model of the bad data; run again unchanged, it reuses that new run."""
    from datetime import datetime, timezone

    from airflow_mlops.core.lineage import TAG_DATA_SHA256

    data = tmp_path / "customers.csv"
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"age": rng.integers(18, 80, 200), "income": rng.normal(50, 10, 200)})
    frame["churned"] = (frame["age"] < 40).astype(int)
    broken = frame.assign(churned=1 - frame["churned"])  # labels flipped by a bad export
    broken.to_csv(data, index=False)
    dag = build_dag(
        "train_rerun",
        train_uri=str(data),
        target="churned",
        experiment_name=experiment_name,
        estimator="sklearn.linear_model.LogisticRegression",
    )
    when = datetime(2026, 1, 1, tzinfo=timezone.utc)
    # With a signing connection, the operator signs what it logs (issue #14 item 6).
    signing = {"conn_type": "generic", "password": "operator-signing-key-0123"}
    monkeypatch.setenv("AIRFLOW_CONN_MLOPS_SIGNING", json.dumps(signing))

    def run_once() -> dict:
        serialize_dag(dag)
        assert dag.test(logical_date=when, run_after=when).state == "success"
        (result,) = COLLECTED[-1:]
        return result

    first = run_once()
    frame.to_csv(data, index=False)  # the data file is fixed; the run is cleared and re-run
    fixed = run_once()
    unchanged = run_once()

    assert fixed["idempotency_key"] == first["idempotency_key"]  # same task instance
    assert not fixed["reused"] and fixed["run_id"] != first["run_id"]
    assert fixed["model_uri"] != first["model_uri"]
    assert unchanged["reused"] and unchanged["run_id"] == fixed["run_id"]
    client = MlflowClient(mlflow_server)
    old_sha, new_sha = (
        client.get_run(r["run_id"]).data.tags[TAG_DATA_SHA256] for r in (first, fixed)
    )
    assert old_sha != new_sha
    logged = client.get_logged_model(fixed["model_uri"].removeprefix("models:/"))
    assert logged.tags["mlops.signature"].startswith("hmac-sha256:v1:")


# -- datasets (#16): an S3 prefix of Hive partitions, through StorageHook's filesystem ----------
DAYS = ["2026-11-29", "2026-11-30", "2026-12-01"]


def land_on_s3(s3_server: str, bucket: str, prefix: str, tmp_path: Path) -> str:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    for index, day in enumerate(DAYS):
        rng = np.random.default_rng(index)
        frame = pd.DataFrame({"age": rng.integers(18, 80, 80), "income": rng.normal(50, 10, 80)})
        frame["churned"] = (frame["age"] < 40).astype(int)
        local = tmp_path / f"{day}.parquet"
        frame.to_parquet(local, index=False)
        s3.upload_file(str(local), bucket, f"{prefix}/dt={day}/part-0.parquet")
    return f"s3://{bucket}/{prefix}"


def test_training_on_an_s3_prefix_records_the_window_manifest_and_split(
    mlflow_conn,
    mlflow_server,
    run_dag,
    s3_server,
    s3_bucket,
    experiment_name,
    tmp_path,
    monkeypatch,
):
    from airflow_mlops.core.lineage import (
        MANIFEST_ARTIFACT_PATH,
        TAG_DATA_FILES,
        TAG_DATA_MANIFEST_HASH,
        TAG_DATA_SHA256,
        TAG_DATA_URI,
        TAG_DATA_WINDOW,
    )
    from airflow_mlops.core.manifest import Manifest
    from airflow_mlops.core.stable_split import StableSplit

    monkeypatch.setenv("AIRFLOW__MLOPS__ARTIFACTS_URI", str(tmp_path / "artifacts"))
    uri = land_on_s3(s3_server, s3_bucket, "customers", tmp_path)
    dag = build_dag(
        f"train_s3_{uuid.uuid4().hex[:6]}",
        train_uri=uri,
        window={"last_partitions": 2},
        window_end="{{ dag_run.conf.get('end', '') }}",
        target="churned",
        experiment_name=experiment_name,
        estimator="sklearn.linear_model.LogisticRegression",
    )
    assert run_dag(dag, end=DAYS[1]).state == "success"
    (result,) = COLLECTED

    client = MlflowClient(mlflow_server)
    tags = client.get_run(result["run_id"]).data.tags
    manifest = Manifest.from_json(
        Path(client.download_artifacts(result["run_id"], MANIFEST_ARTIFACT_PATH)).read_text()
    )
    # The window ends with the partition named by the run: the first two days, nothing newer.
    read = [f"{uri}/dt={day}/part-0.parquet" for day in DAYS[:2]]
    assert [entry.path for entry in manifest.files] == read
    assert tags[TAG_DATA_SHA256] == tags[TAG_DATA_MANIFEST_HASH] == manifest.content_hash
    assert (tags[TAG_DATA_FILES], tags[TAG_DATA_WINDOW], tags[TAG_DATA_URI]) == (
        "2",
        "last 2 partitions",
        uri,
    )
    split = StableSplit.from_tags(tags)
    assert split.key_columns == ("age", "churned", "income")
    holdout = pd.read_parquet(result["holdout_uri"])
    assert set(holdout["__mlops_file"]) <= set(read) and split.holdout(holdout).all()


def test_a_corrupt_partition_fails_the_task_with_an_error_naming_the_file(
    mlflow_conn, run_dag, experiment_name, tmp_path
):
    from conftest import stored_xcom

    from airflow_mlops.core.summary import ERROR_XCOM_KEY

    root = tmp_path / "customers"
    for day in DAYS:
        (root / f"dt={day}").mkdir(parents=True)
        pd.DataFrame({"age": [20, 50] * 10, "churned": [1, 0] * 10}).to_parquet(
            root / f"dt={day}" / "part-0.parquet", index=False
        )
    bad = root / f"dt={DAYS[1]}" / "part-0.parquet"
    bad.write_bytes(b"PAR1 not really parquet")
    dag = build_dag(
        f"train_bad_{uuid.uuid4().hex[:6]}",
        train_uri=str(root),
        target="churned",
        experiment_name=experiment_name,
        estimator="sklearn.linear_model.LogisticRegression",
    )
    dag_run = run_dag(dag)
    assert dag_run.state == "failed"
    error = stored_xcom(dag_run, "train", key=ERROR_XCOM_KEY)["error"]
    assert error.startswith("UnreadableDataError") and f"{bad} cannot be read as parquet" in error
