"""core.training against the real MLflow server fixture: models, lineage, retries, bad input."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from airflow_mlops.core.datasets import SOURCE_FILE_COLUMN
from airflow_mlops.core.errors import ConfigError, DataError, UnreadableDataError
from airflow_mlops.core.estimators import resolve_estimator, to_distribution
from airflow_mlops.core.lineage import (
    MANIFEST_ARTIFACT_PATH,
    TAG_DAG_ID,
    TAG_DATA_FILES,
    TAG_DATA_MANIFEST_HASH,
    TAG_DATA_ROWS,
    TAG_DATA_SHA256,
    TAG_DATA_URI,
    TAG_DATA_WINDOW,
    TAG_ERROR,
    TAG_FEATURES,
    TAG_HOLDOUT_SHA256,
    TAG_HOLDOUT_URI,
    TAG_IDEMPOTENCY_KEY,
    TAG_MODEL_NAME,
    TAG_MODEL_URI,
    TAG_REFERENCE_URI,
    TAG_SEARCH_BEST_PARAMS,
    TAG_SPLIT_TIME_CUTOFF,
    TAG_STAGE,
    TAG_TARGET,
    TAG_TASK,
    TAG_TRY_NUMBER,
    RunContext,
    detect_git_commit,
)
from airflow_mlops.core.manifest import Manifest
from airflow_mlops.core.metrics import compute_metrics, predict_for_metrics
from airflow_mlops.core.mlflow_settings import MlflowSettings, mlflow_environment
from airflow_mlops.core.stable_split import StableSplit, holdout_mask
from airflow_mlops.core.storage import Storage, sha256_bytes
from airflow_mlops.core.training import (
    ARTIFACTS_URI_ENV,
    TrainingInterrupted,
    default_artifacts_uri,
    train_model,
)
from airflow_mlops.core.training_config import SearchConfig
from airflow_mlops.core.training_job import TrainingJob
from airflow_mlops.core.training_logging import (
    MLFLOW_PARENT_RUN_ID,
    STAGE_TRAINING,
    pinned_requirements,
)


# -- data ------------------------------------------------------------------------------------
def make_frame(n: int = 600, seed: int = 0) -> pd.DataFrame:
    """Numeric, categorical and boolean features with missing values; several targets."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "x1": rng.normal(size=n),
            "x2": rng.normal(size=n),
            "city": rng.choice(["paris", "lyon", "nice"], size=n),
            "member": rng.random(n) > 0.5,
            "day": pd.date_range("2024-01-01", periods=n, freq="h"),
        }
    )
    frame.loc[::25, "x1"] = np.nan
    frame.loc[::40, "city"] = None
    signal = frame["x1"].fillna(0) + frame["x2"] + (frame["city"] == "paris") * 0.8
    frame["label"] = (signal > 0.4).astype(int)
    frame["tier"] = np.digitize(signal, [-0.5, 0.8])  # 3 classes
    frame["tier_name"] = np.array(["bronze", "silver", "gold"])[frame["tier"]]
    frame["amount"] = 3 * frame["x2"] + 2 * (frame["city"] == "nice") + rng.normal(size=n)
    return frame


TARGETS = ["label", "tier", "tier_name", "amount"]


@pytest.fixture(scope="module")
def train_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("train") / "train.parquet"
    make_frame().to_parquet(path, index=False)
    return str(path)


@pytest.fixture
def client(mlflow_server: str) -> Iterator[MlflowClient]:
    with mlflow_environment(MlflowSettings(tracking_uri=mlflow_server)):
        yield MlflowClient()


@pytest.fixture
def experiment(client: MlflowClient) -> tuple[str, str]:
    name = f"train-{uuid.uuid4().hex[:10]}"
    return name, client.create_experiment(name)


def config_for(train_uri: str, experiment: tuple[str, str], target: str, **kwargs) -> TrainingJob:
    # "day" is a datetime: excluded, unless it is the split's time column (dropped automatically).
    extra = [] if kwargs.get("time_column") == "day" else ["day"]
    kwargs.setdefault("exclude", [t for t in TARGETS if t != target] + extra)
    return TrainingJob(train_uri=train_uri, target=target, experiment_name=experiment[0], **kwargs)


def context(run_id: str = "run-1", try_number: int = 1) -> RunContext:
    return RunContext(dag_id="ct", run_id=run_id, task_id="train", try_number=try_number)


def runs_of(client: MlflowClient, experiment_id: str, **filters: str) -> list:
    clauses = [f"tags.`{k}` = '{v}'" for k, v in filters.items()]
    return client.search_runs([experiment_id], filter_string=" AND ".join(clauses))


def recorded_manifest(client: MlflowClient, run_id: str) -> Manifest:
    local = client.download_artifacts(run_id, MANIFEST_ARTIFACT_PATH)
    return Manifest.from_json(Path(local).read_text())


def assert_model_reproduces_metrics(result, target: str) -> None:
    """The logged model, loaded back from its URI, scores the stored holdout identically."""
    model = mlflow.sklearn.load_model(result.model_uri)
    holdout = pd.read_parquet(result.holdout_uri)
    assert sha256_bytes(Path(result.holdout_uri).read_bytes()) == result.holdout_sha256
    # The holdout also carries each row's source file (#16), never a model input.
    assert holdout[SOURCE_FILE_COLUMN].notna().all()
    features = holdout.drop(columns=[target, SOURCE_FILE_COLUMN])
    y_pred, y_score = predict_for_metrics(model, features, result.task)
    again = compute_metrics(result.task, holdout[target], y_pred, y_score)
    assert again == pytest.approx(result.metrics)


# -- models through the real server ----------------------------------------------------------
def test_sklearn_classification_logs_model_metrics_and_lineage(client, experiment, train_uri):
    config = config_for(
        train_uri,
        experiment,
        "label",
        estimator="sklearn.ensemble.RandomForestClassifier",
        params={"n_estimators": 25, "random_state": 0},
        model_name="churn",
    )
    result = train_model(config, context(), Storage(), client, experiment_id=experiment[1])

    assert result.task == "classification" and not result.reused
    assert set(result.metrics) == {"accuracy", "precision", "recall", "f1", "roc_auc", "log_loss"}
    assert result.metrics["accuracy"] > 0.8
    assert_model_reproduces_metrics(result, "label")

    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    tags, data = run.data.tags, make_frame()
    assert tags[TAG_STAGE] == STAGE_TRAINING
    assert tags[TAG_DATA_URI] == train_uri
    # One file is a dataset of one file: the data hash is its manifest's content hash.
    manifest = recorded_manifest(client, result.run_id)
    assert [(e.path, e.sha256) for e in manifest.files] == [
        (train_uri, sha256_bytes(Path(train_uri).read_bytes()))
    ]
    assert tags[TAG_DATA_SHA256] == tags[TAG_DATA_MANIFEST_HASH] == manifest.content_hash
    assert (tags[TAG_DATA_FILES], tags[TAG_DATA_WINDOW]) == ("1", "all partitions")
    assert tags[TAG_DATA_ROWS] == str(len(data))
    assert tags[TAG_HOLDOUT_URI] == result.holdout_uri
    assert tags[TAG_HOLDOUT_SHA256] == result.holdout_sha256
    assert tags[TAG_REFERENCE_URI] == result.reference_uri
    assert tags[TAG_TARGET] == "label" and tags[TAG_TASK] == "classification"
    assert json.loads(tags[TAG_FEATURES]) == ["x1", "x2", "city", "member", "day"][:4]
    assert tags[TAG_MODEL_NAME] == "churn"
    assert tags[TAG_MODEL_URI] == result.model_uri
    assert tags[TAG_DAG_ID] == "ct" and tags[TAG_TRY_NUMBER] == "1"
    assert tags[TAG_IDEMPOTENCY_KEY] == context().idempotency_key
    assert run.data.params["model.n_estimators"] == "25"
    assert run.data.metrics["holdout_accuracy"] == pytest.approx(result.metrics["accuracy"])

    # Holdout: the rows the hash of the feature and target columns puts in the lowest 25 %
    # (the default), about 150; reference: the training features only.
    holdout, reference = pd.read_parquet(result.holdout_uri), pd.read_parquet(result.reference_uri)
    split = StableSplit.from_tags(tags)
    assert split.key_columns == ("city", "label", "member", "x1", "x2") and split.by_content
    assert len(holdout) == holdout_mask(data[list(split.key_columns)], 0.25, 42).sum()
    assert len(holdout) + len(reference) == 600 and 120 <= len(holdout) <= 180
    assert list(reference.columns) == json.loads(tags[TAG_FEATURES])
    assert holdout["label"].mean() == pytest.approx(data["label"].mean(), abs=0.06)
    assert split.holdout(holdout).all()  # evaluation can recompute each row's side

    # The model carries a signature, an input example and our pinned requirements.
    model_dir = Path(mlflow.artifacts.download_artifacts(result.model_uri))
    requirements = (model_dir / "requirements.txt").read_text().split()
    assert f"scikit-learn=={__import__('sklearn').__version__}" in requirements
    assert any(r.startswith("cloudpickle==") for r in requirements)
    info = mlflow.models.get_model_info(result.model_uri)
    assert [c["name"] for c in info.signature.inputs.to_dict()] == ["x1", "x2", "city", "member"]
    assert (model_dir / "input_example.json").is_file()


def test_xgboost_classification_with_random_search_logs_nested_trials(
    client, experiment, train_uri
):
    config = config_for(
        train_uri,
        experiment,
        "tier",
        estimator="xgboost.XGBClassifier",
        params={"n_estimators": 20, "n_jobs": 1},
        search=SearchConfig(
            method="random",
            space={
                "max_depth": {"distribution": "randint", "low": 2, "high": 4},
                "learning_rate": {"distribution": "loguniform", "low": 0.05, "high": 0.5},
            },
            n_iter=3,
            cv=3,
        ),
    )
    result = train_model(config, context(), Storage(), client, experiment_id=experiment[1])

    assert set(result.best_params) == {"max_depth", "learning_rate"}
    assert 2 <= result.best_params["max_depth"] <= 4
    assert_model_reproduces_metrics(result, "tier")
    run = client.get_run(result.run_id)
    assert json.loads(run.data.tags[TAG_SEARCH_BEST_PARAMS]) == result.best_params
    assert "cv_best_score" in run.data.metrics
    trials = runs_of(client, experiment[1], **{MLFLOW_PARENT_RUN_ID: result.run_id})
    assert len(trials) == 3
    assert {t.info.status for t in trials} == {"FINISHED"}
    assert all({"max_depth", "learning_rate"} <= set(t.data.params) for t in trials)
    assert all("cv_mean_score" in t.data.metrics for t in trials)
    # Trials never answer for the task's idempotency key.
    assert all(TAG_IDEMPOTENCY_KEY not in t.data.tags for t in trials)


def test_xgboost_regression_without_search(client, experiment, train_uri):
    config = config_for(
        train_uri,
        experiment,
        "amount",
        estimator="xgboost.XGBRegressor",
        params={"n_estimators": 40, "max_depth": 3, "n_jobs": 1},
    )
    result = train_model(config, context(), Storage(), client, experiment_id=experiment[1])
    assert result.task == "regression"
    assert set(result.metrics) == {"rmse", "mae", "r2"}
    assert result.metrics["r2"] > 0.7
    assert_model_reproduces_metrics(result, "amount")
    model_dir = Path(mlflow.artifacts.download_artifacts(result.model_uri))
    assert (
        f"xgboost=={__import__('xgboost').__version__}"
        in (model_dir / "requirements.txt").read_text().split()
    )


def test_sklearn_regression_grid_search_with_out_of_time_holdout(client, experiment, train_uri):
    config = config_for(
        train_uri,
        experiment,
        "amount",
        estimator="sklearn.linear_model.Ridge",
        holdout_fraction=0.25,
        time_column="day",
        search=SearchConfig(method="grid", space={"alpha": [0.1, 1.0, 10.0]}, cv=3),
    )
    result = train_model(config, context(), Storage(), client, experiment_id=experiment[1])

    assert result.best_params["alpha"] in (0.1, 1.0, 10.0)
    assert_model_reproduces_metrics(result, "amount")
    run = client.get_run(result.run_id)
    cutoff = pd.Timestamp(run.data.tags[TAG_SPLIT_TIME_CUTOFF])
    data = make_frame()
    assert cutoff == data["day"].iloc[450]  # the last 150 hourly rows are held out
    # The time column is the split key, not a feature.
    assert "day" not in json.loads(run.data.tags[TAG_FEATURES])
    assert len(pd.read_parquet(result.holdout_uri)) == 150
    assert len(runs_of(client, experiment[1], **{MLFLOW_PARENT_RUN_ID: result.run_id})) == 3


def test_string_multiclass_with_a_user_factory_and_no_default_preprocessing(
    client, experiment, train_uri
):
    """Bring your own estimator: a factory returning a full Pipeline."""
    from sklearn.compose import make_column_transformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    def build():
        columns = make_column_transformer(
            (make_pipeline(SimpleImputer(), StandardScaler()), ["x1", "x2"]),
            (OneHotEncoder(handle_unknown="ignore"), ["city"]),
        )
        return make_pipeline(columns, LogisticRegression(max_iter=500))

    config = config_for(
        train_uri,
        experiment,
        "tier_name",
        estimator=build,
        features=["x1", "x2", "city"],
        preprocessing=None,
        params={"logisticregression__C": 2.0},
    )
    frame = make_frame()
    frame["city"] = frame["city"].fillna("unknown")
    path = Path(train_uri).with_name("train_filled.parquet")
    frame.to_parquet(path, index=False)
    config = config.model_copy(update={"train_uri": str(path)})

    result = train_model(config, context(), Storage(), client, experiment_id=experiment[1])
    assert result.metrics["roc_auc"] > 0.8
    assert_model_reproduces_metrics(result, "tier_name")
    # Logged params are those of the innermost estimator of the user's pipeline.
    assert client.get_run(result.run_id).data.params["model.C"] == "2.0"


@pytest.mark.parametrize(
    ("estimator", "target", "params", "space"),
    [
        (
            "sklearn.ensemble.RandomForestClassifier",
            "label",
            {"n_estimators": 15},
            {"max_depth": [3, 6]},
        ),
        ("sklearn.ensemble.RandomForestRegressor", "amount", {"n_estimators": 15}, None),
        ("xgboost.XGBClassifier", "label", {"n_estimators": 20, "n_jobs": 1}, None),
        (
            "xgboost.XGBRegressor",
            "amount",
            {"n_estimators": 20, "n_jobs": 1},
            {"max_depth": [2, 4]},
        ),
    ],
    ids=["sklearn-clf-search", "sklearn-reg", "xgb-clf", "xgb-reg-search"],
)
def test_remaining_library_task_search_combinations(
    client, experiment, train_uri, estimator, target, params, space
):
    """With the tests above: sklearn and XGBoost x classification and regression x search."""
    search = SearchConfig(method="grid", space=space, cv=2) if space else None
    config = config_for(
        train_uri, experiment, target, estimator=estimator, params=params, search=search
    )
    result = train_model(config, context(), Storage(), client, experiment_id=experiment[1])
    assert result.task == ("classification" if target == "label" else "regression")
    assert (result.best_params is not None) == (space is not None)
    assert_model_reproduces_metrics(result, target)
    assert client.get_run(result.run_id).info.status == "FINISHED"


# -- retry safety ----------------------------------------------------------------------------
def test_retry_returns_the_finished_run_instead_of_training_again(client, experiment, train_uri):
    config = config_for(train_uri, experiment, "label", params={"n_estimators": 20})
    first = train_model(
        config, context(try_number=1), Storage(), client, experiment_id=experiment[1]
    )
    second = train_model(
        config, context(try_number=2), Storage(), client, experiment_id=experiment[1]
    )

    assert second.reused and second.run_id == first.run_id
    assert second.model_uri == first.model_uri and second.metrics == pytest.approx(first.metrics)
    key = context().idempotency_key
    assert len(runs_of(client, experiment[1], **{TAG_IDEMPOTENCY_KEY: key})) == 1
    # Another Airflow run (another key) trains its own model.
    other = train_model(config, context("run-2"), Storage(), client, experiment_id=experiment[1])
    assert other.run_id != first.run_id and not other.reused


def test_a_finished_run_is_reused_only_for_the_same_data_and_configuration(
    client, experiment, tmp_path
):
    """Issue #14 item 7: the key alone (dag/run/task) must not bring back the wrong model."""
    data = tmp_path / "train.parquet"
    make_frame(seed=1).to_parquet(data, index=False)
    config = config_for(str(data), experiment, "label", params={"n_estimators": 20})
    first = train_model(config, context(), Storage(), client, experiment_id=experiment[1])

    make_frame(seed=2).to_parquet(data, index=False)  # the data file was fixed
    refit = train_model(config, context(), Storage(), client, experiment_id=experiment[1])
    assert not refit.reused and refit.run_id != first.run_id
    tags = client.get_run(refit.run_id).data.tags
    assert recorded_manifest(client, refit.run_id).files[0].sha256 == sha256_bytes(
        data.read_bytes()
    )
    assert tags[TAG_DATA_SHA256] != client.get_run(first.run_id).data.tags[TAG_DATA_SHA256]

    other_params = config_for(str(data), experiment, "label", params={"n_estimators": 30})
    retuned = train_model(other_params, context(), Storage(), client, experiment_id=experiment[1])
    assert not retuned.reused and retuned.run_id not in {first.run_id, refit.run_id}
    # Same data and configuration again: each matching run is found, not retrained.
    again = train_model(config, context(), Storage(), client, experiment_id=experiment[1])
    assert again.reused and again.run_id == refit.run_id


def test_deployments_sharing_one_mlflow_never_reuse_each_others_runs(client, experiment, train_uri):
    config = config_for(train_uri, experiment, "label", params={"n_estimators": 20})
    staging = RunContext(dag_id="ct", run_id="run-1", task_id="train", deployment="staging")
    production = RunContext(dag_id="ct", run_id="run-1", task_id="train", deployment="prod")
    assert staging.idempotency_key != production.idempotency_key
    first = train_model(config, staging, Storage(), client, experiment_id=experiment[1])
    second = train_model(config, production, Storage(), client, experiment_id=experiment[1])
    assert not second.reused and second.run_id != first.run_id
    assert client.get_run(second.run_id).data.tags["mlops.deployment"] == "prod"


def test_a_run_left_running_by_a_killed_try_is_failed_then_replaced(client, experiment, train_uri):
    ctx = context()
    leftover = client.create_run(
        experiment[1], tags={**ctx.as_tags(), TAG_STAGE: STAGE_TRAINING}, run_name="killed"
    )
    leftover_trial = client.create_run(
        experiment[1], tags={MLFLOW_PARENT_RUN_ID: leftover.info.run_id}, run_name="trial"
    )
    config = config_for(train_uri, experiment, "label", params={"n_estimators": 20})
    result = train_model(
        config, context(try_number=2), Storage(), client, experiment_id=experiment[1]
    )

    assert client.get_run(leftover.info.run_id).info.status == "FAILED"
    assert "killed" in client.get_run(leftover.info.run_id).data.tags[TAG_ERROR]
    assert client.get_run(leftover_trial.info.run_id).info.status == "FAILED"
    runs = runs_of(client, experiment[1], **{TAG_IDEMPOTENCY_KEY: ctx.idempotency_key})
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]
    assert [r.info.run_id for r in runs if r.info.status == "FINISHED"] == [result.run_id]


def test_a_stop_request_fails_the_run_and_never_finishes_it(client, experiment, train_uri):
    started: list[str] = []
    config = config_for(train_uri, experiment, "label", params={"n_estimators": 20})
    with pytest.raises(TrainingInterrupted):
        train_model(
            config,
            context(),
            Storage(),
            client,
            experiment_id=experiment[1],
            on_run_started=started.append,
            should_stop=lambda: bool(started),
        )
    run = client.get_run(started[0])
    assert run.info.status == "FAILED"
    assert "TrainingInterrupted" in run.data.tags[TAG_ERROR]


def test_an_error_inside_the_run_marks_it_failed_and_is_raised(client, experiment, train_uri):
    # No preprocessing: the estimator meets raw strings and fails inside fit().
    config = config_for(
        train_uri,
        experiment,
        "label",
        estimator="sklearn.linear_model.LogisticRegression",
        preprocessing=None,
    )
    with pytest.raises(ValueError, match="could not convert string"):
        train_model(config, context(), Storage(), client, experiment_id=experiment[1])
    (run,) = client.search_runs([experiment[1]])
    assert run.info.status == "FAILED"
    assert "could not convert string" in run.data.tags[TAG_ERROR]


def test_metrics_are_logged_in_batches_never_one_request_per_metric(
    client, experiment, train_uri, monkeypatch
):
    from mlflow.utils import rest_utils

    endpoints: list[str] = []
    real = rest_utils.http_request

    def counting(host_creds, endpoint, method, *args, **kwargs):
        endpoints.append(endpoint)
        return real(host_creds, endpoint, method, *args, **kwargs)

    monkeypatch.setattr(rest_utils, "http_request", counting)
    config = config_for(train_uri, experiment, "label", params={"n_estimators": 20})
    train_model(config, context(), Storage(), client, experiment_id=experiment[1])

    assert not [e for e in endpoints if e.endswith(("/runs/log-metric", "/runs/log-parameter"))]
    assert not [e for e in endpoints if e.endswith(("/runs/set-tag", "/metrics/get-history"))]
    assert sum(e.endswith("/runs/log-batch") for e in endpoints) == 2
    assert len(endpoints) <= 15, endpoints

    # A retry that finds the finished run costs a single search.
    endpoints.clear()
    assert train_model(config, context(), Storage(), client, experiment_id=experiment[1]).reused
    assert [e.rsplit("/", 2)[-2:] for e in endpoints] == [["runs", "search"]]


# -- bad input: a clear error before any run exists -------------------------------------------
@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"target": "missing"}, DataError, "target column 'missing' is not in"),
        ({"estimator": "sklearn.ensemble.NoSuchForest"}, ConfigError, "has no 'NoSuchForest'"),
        ({"estimator": "not_a_module.Model"}, ConfigError, "not in an allowed module"),
        ({"estimator": "collections.OrderedDict"}, ConfigError, "not in an allowed module"),
        ({"estimator": "sklearn.base.BaseEstimator"}, ConfigError, "no attribute|not a scikit|fit"),
        ({"params": {"n_trees": 5}}, ConfigError, r"params \['n_trees'\] are not parameters"),
        (
            {
                "estimator": "sklearn.ensemble.RandomForestClassifier",
                "params": {"n_estimators": -1},
            },
            ConfigError,
            "n_estimators",
        ),
        (
            {"estimator": "xgboost.XGBClassifier", "params": {"max_dept": 3}},
            ConfigError,
            r"\['max_dept'\]",
        ),
        ({"task": "regression", "target": "tier_name"}, DataError, "non-numeric dtype"),
        ({"holdout_fraction": 1.5}, ConfigError, "holdout_fraction"),
        # Only the needed columns are read (#16): the reader names the missing one.
        ({"features": ["x1", "nope"]}, DataError, r"Columns \['nope'\] are not in the dataset"),
        ({"features": ["x1", "day"], "exclude": []}, ConfigError, "datetimes"),
        (
            {"estimator": "xgboost.XGBClassifier", "target": "tier_name"},
            DataError,
            "labels 0..2",
        ),
        (
            {"search": SearchConfig(space={"no_such_param": [1, 2]})},
            ConfigError,
            "model__no_such_param",
        ),
    ],
)
def test_bad_configuration_fails_before_any_run(
    client, experiment, train_uri, change, error, message
):
    others = [t for t in TARGETS if t != change.get("target", "label")]
    base = {"target": "label", "exclude": [*others, "day"]}
    with pytest.raises(error, match=message):
        config = TrainingJob.from_values(
            {"train_uri": train_uri, "experiment_name": experiment[0], **base, **change}
        )
        train_model(config, context(), Storage(), client, experiment_id=experiment[1])
    assert client.search_runs([experiment[1]]) == []


@pytest.mark.parametrize(
    ("frame", "target", "message"),
    [
        (pd.DataFrame({"x": range(50), "y": [1] * 50}), "y", "single class"),
        (pd.DataFrame({"x": range(3), "y": [0.1, 0.2, 0.3]}), "y", "too small to split"),
        # One row of class 1: a side of the hash split lacks it (or holds < 2 rows).
        (
            pd.DataFrame({"x": range(6), "y": [0, 0, 0, 0, 0, 1]}),
            "y",
            "too small to split|holds 1 class",
        ),
        (pd.DataFrame({"x": range(10), "y": [0, 1] * 4 + [None, 1]}), "y", "missing value"),
        # Found by exploring fuzz: the imputer dropped the empty column, then scikit-learn
        # failed on "0 feature(s)" without naming it.
        (pd.DataFrame({"x": [None] * 40, "y": [0, 1] * 20}), "y", r"\['x'\] .* no value"),
        (
            pd.DataFrame({"x": range(40), "z": [None] * 40, "y": [0, 1] * 20}),
            "y",
            r"feature columns \['z'\] of .*bad.csv have no value in any of the \d+ training rows",
        ),
    ],
)
def test_bad_data_fails_before_any_run(client, experiment, tmp_path, frame, target, message):
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    config = TrainingJob(train_uri=str(path), target=target, experiment_name=experiment[0])
    with pytest.raises(DataError, match=message):
        train_model(config, context(), Storage(), client, experiment_id=experiment[1])
    assert client.search_runs([experiment[1]]) == []


def test_training_data_from_s3_writes_holdout_and_reference_to_s3(
    client, experiment, s3_server, s3_bucket, monkeypatch
):
    import boto3

    from airflow_mlops.hooks.storage import StorageHook

    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    storage = Storage(s3_client_factory=lambda: s3)
    storage.write_table(make_frame(), f"s3://{s3_bucket}/data/train.parquet")
    config = TrainingJob(
        train_uri=f"s3://{s3_bucket}/data/train.parquet",
        target="label",
        exclude=[t for t in TARGETS if t != "label"] + ["day"],
        experiment_name=experiment[0],
        params={"n_estimators": 10},
    )
    # Remote data needs a configured artifacts root: never "next to the data" (issue #14).
    # Remote data is read through the caller's filesystem (the operator's StorageHook).
    with pytest.raises(ConfigError, match=r"is remote: pass its filesystem"):
        train_model(config, context(), storage, client, experiment_id=experiment[1])
    fs = StorageHook(aws_conn_id="aws_default").get_filesystem(config.train_uri)
    monkeypatch.delenv(ARTIFACTS_URI_ENV, raising=False)
    with pytest.raises(ConfigError, match=r"remote but no artifacts location"):
        train_model(config, context(), storage, client, experiment_id=experiment[1], filesystem=fs)
    monkeypatch.setenv(ARTIFACTS_URI_ENV, f"s3://{s3_bucket}/mlops")
    result = train_model(
        config, context(), storage, client, experiment_id=experiment[1], filesystem=fs
    )

    prefix = f"s3://{s3_bucket}/mlops/training/{context().idempotency_key}/"
    assert result.holdout_uri == prefix + "holdout.parquet"
    assert result.reference_uri == prefix + "reference.parquet"
    stored = storage.read_table(result.holdout_uri)
    assert stored.sha256 == result.holdout_sha256
    assert stored.rows == int(client.get_run(result.run_id).data.tags["mlops.holdout.rows"])
    assert set(stored.frame[SOURCE_FILE_COLUMN]) == {config.train_uri}


# -- datasets, windows and the stable split (#16) ---------------------------------------------
DAYS = ["2026-11-28", "2026-11-29", "2026-11-30", "2026-12-01"]


def day_rows(day: str, n: int = 60) -> pd.DataFrame:
    index = DAYS.index(day)
    rng = np.random.default_rng(100 + index)
    frame = pd.DataFrame(
        {"id": np.arange(n) + 1000 * index, "x1": rng.normal(size=n), "x2": rng.normal(size=n)}
    )
    frame["label"] = (frame["x1"] + frame["x2"] > 0).astype(int)
    return frame


def land(root: Path, days: list[str]) -> Path:
    """One Hive partition per day, as a producer DAG lands them."""
    for day in days:
        (root / f"dt={day}").mkdir(parents=True, exist_ok=True)
        day_rows(day).to_parquet(root / f"dt={day}" / "part-0.parquet", index=False)
    return root


def partition_job(uri: str, experiment: tuple[str, str], **kwargs) -> TrainingJob:
    return TrainingJob(
        train_uri=uri,
        target="label",
        experiment_name=experiment[0],
        exclude=["id"],
        estimator="sklearn.linear_model.LogisticRegression",
        **kwargs,
    )


def test_a_window_of_the_last_partitions_trains_on_them_only_and_records_its_manifest(
    client, experiment, tmp_path
):
    root = land(tmp_path / "sales", DAYS)
    config = partition_job(str(root), experiment, window={"last_partitions": 2})
    result = train_model(config, context(), Storage(), client, experiment_id=experiment[1])

    tags = client.get_run(result.run_id).data.tags
    manifest = recorded_manifest(client, result.run_id)
    read = [str(root / f"dt={day}" / "part-0.parquet") for day in DAYS[-2:]]
    assert [(e.path, e.partition) for e in manifest.files] == [
        (path, {"dt": day}) for path, day in zip(read, DAYS[-2:], strict=True)
    ]
    assert tags[TAG_DATA_SHA256] == tags[TAG_DATA_MANIFEST_HASH] == manifest.content_hash
    assert (tags[TAG_DATA_FILES], tags[TAG_DATA_WINDOW]) == ("2", "last 2 partitions")
    assert (tags[TAG_DATA_URI], tags[TAG_DATA_ROWS]) == (str(root), "120")
    # Neither the partition column nor the source file is a feature.
    assert json.loads(tags[TAG_FEATURES]) == ["x1", "x2"]
    split = StableSplit.from_tags(tags)
    assert split.key_columns == ("label", "x1", "x2") and split.holdout_fraction == 0.25
    holdout = pd.read_parquet(result.holdout_uri)
    assert set(holdout[SOURCE_FILE_COLUMN]) <= set(read)
    assert split.holdout(holdout).all()
    assert_model_reproduces_metrics(result, "label")


def test_a_row_keeps_its_side_and_a_retry_after_a_new_partition_trains_again(
    client, experiment, tmp_path
):
    root = land(tmp_path / "sales", DAYS[:3])
    config = partition_job(str(root), experiment, key=["id"])
    first = train_model(config, context(), Storage(), client, experiment_id=experiment[1])
    # Read now: a retry of the same task instance writes to the same artifacts folder.
    first_holdout = pd.read_parquet(first.holdout_uri)
    land(root, DAYS[3:])  # a partition lands before the task is retried
    retry = train_model(
        config, context(try_number=2), Storage(), client, experiment_id=experiment[1]
    )

    assert not retry.reused and retry.run_id != first.run_id
    before, after = (client.get_run(r.run_id).data.tags for r in (first, retry))
    assert before[TAG_DATA_SHA256] != after[TAG_DATA_SHA256]
    assert (before[TAG_DATA_FILES], after[TAG_DATA_FILES]) == ("3", "4")
    assert StableSplit.from_tags(after).key_columns == ("id",)
    # The key column is kept in the holdout (not a feature): the rows of the first three
    # days held out by the first run are exactly those the second run held out.
    retry_holdout = pd.read_parquet(retry.holdout_uri)
    assert "id" in first_holdout.columns and "id" not in json.loads(after[TAG_FEATURES])
    old_days = retry_holdout[retry_holdout["id"] < 1000 * len(DAYS[:3])]
    assert set(old_days["id"]) == set(first_holdout["id"])
    assert set(retry_holdout["id"]) > set(first_holdout["id"])
    assert np.array_equal(
        StableSplit.from_tags(before).holdout(first_holdout), np.ones(len(first_holdout), bool)
    )


def test_a_bad_partition_is_named_before_any_run(client, experiment, tmp_path):
    root = land(tmp_path / "sales", DAYS)
    bad = root / f"dt={DAYS[1]}" / "part-0.parquet"
    bad.write_bytes(bad.read_bytes()[:-40])
    with pytest.raises(UnreadableDataError, match=f"{bad} cannot be read as parquet"):
        train_model(
            partition_job(str(root), experiment),
            context(),
            Storage(),
            client,
            experiment_id=experiment[1],
        )
    assert client.search_runs([experiment[1]]) == []


# -- pure helpers ----------------------------------------------------------------------------
def test_config_errors_name_the_field():
    job = {"train_uri": "x.csv", "target": "y", "experiment_name": "e"}
    with pytest.raises(ConfigError, match="training job has unknown field 'fraction'"):
        TrainingJob.from_values({**job, "fraction": 0.3})
    with pytest.raises(ConfigError, match=r"search\.method"):
        TrainingJob.from_values({**job, "search": {"method": "bayes", "space": {"a": [1]}}})
    with pytest.raises(ConfigError, match=r"search\.cv"):
        TrainingJob.from_values({**job, "search": {"space": {"a": [1]}, "cv": 1}})
    with pytest.raises(ConfigError, match="serialization_format"):
        TrainingJob.from_values({**job, "serialization_format": "joblib"})
    with pytest.raises(ConfigError, match="must not contain the target"):
        TrainingJob.from_values({**job, "features": ["a", "y"]})
    with pytest.raises(ConfigError, match="task: Input should be 'classification' or"):
        TrainingJob.from_values({**job, "task": "ranking"})


def test_search_distributions():
    assert to_distribution("a", [1, 2]) == [1, 2]
    randint = to_distribution("a", {"distribution": "randint", "low": 2, "high": 4})
    assert set(randint.rvs(size=200, random_state=0)) == {2, 3, 4}
    log = to_distribution("b", {"distribution": "loguniform", "low": 1e-3, "high": 1.0})
    assert 1e-3 <= log.rvs(random_state=0) <= 1.0
    with pytest.raises(ConfigError, match="low must be a number below high"):
        to_distribution("c", {"distribution": "uniform", "low": 2, "high": 1})
    with pytest.raises(ConfigError, match=r"search\.space\[.d.\]"):
        to_distribution("d", 5)


def test_resolve_estimator_accepts_class_path_and_factory():
    from sklearn.ensemble import RandomForestRegressor

    by_path = resolve_estimator(
        "sklearn.ensemble.RandomForestRegressor", "regression", {"max_depth": 3}
    )
    by_class = resolve_estimator(RandomForestRegressor, "regression", {"max_depth": 3})
    by_factory = resolve_estimator(lambda: RandomForestRegressor(), "regression", {"max_depth": 3})
    assert by_path.max_depth == by_class.max_depth == by_factory.max_depth == 3
    default = resolve_estimator(None, "classification", {})
    assert type(default).__name__ == "RandomForestClassifier"
    with pytest.raises(ConfigError, match=r"factory .* raised"):
        resolve_estimator(lambda: 1 / 0, "regression", {})


def test_an_unset_random_state_takes_the_split_seed_so_retraining_is_reproducible():
    seeded = resolve_estimator("sklearn.tree.DecisionTreeClassifier", "classification", {}, seed=7)
    assert seeded.random_state == 7
    given = {"random_state": 3}
    kept = resolve_estimator("sklearn.tree.DecisionTreeClassifier", "classification", given, seed=7)
    assert kept.random_state == 3
    no_state = resolve_estimator("sklearn.linear_model.LinearRegression", "regression", {}, seed=7)
    assert "random_state" not in no_state.get_params()
    assert resolve_estimator(None, "classification", {}).random_state is None  # no seed given


def test_retraining_without_a_random_state_gives_the_same_model(client, experiment, train_uri):
    """No ``random_state`` in the params: the split seed makes both forests the same."""
    config = config_for(
        train_uri,
        experiment,
        "label",
        estimator="sklearn.ensemble.RandomForestClassifier",
        params={"n_estimators": 10},
    )
    first, second = (
        train_model(config, context(run_id=run), Storage(), client, experiment_id=experiment[1])
        for run in ("run-a", "run-b")
    )
    assert first.run_id != second.run_id and not second.reused
    assert first.metrics == second.metrics
    assert mlflow.sklearn.load_model(first.model_uri)[-1].random_state == config.split.seed


def test_pinned_requirements_cover_the_estimator_library():
    import xgboost
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pins = pinned_requirements(make_pipeline(StandardScaler(), xgboost.XGBRegressor()), "skops")
    names = {p.split("==")[0] for p in pins}
    assert {"mlflow", "scikit-learn", "numpy", "pandas", "scipy", "skops", "xgboost"} <= names
    assert all("==" in p for p in pins)


def test_default_artifacts_uri_is_never_beside_the_data(monkeypatch):
    monkeypatch.delenv(ARTIFACTS_URI_ENV, raising=False)
    monkeypatch.setenv("AIRFLOW_HOME", "/home/af")
    assert default_artifacts_uri("/data/in/train.csv", "k") == "/home/af/mlops_artifacts/training/k"
    with pytest.raises(ConfigError, match="set \\[mlops\\] artifacts_uri"):
        default_artifacts_uri("s3://someone-else/d/train.csv", "k")
    monkeypatch.setenv(ARTIFACTS_URI_ENV, "s3://ours/mlops")
    assert (
        default_artifacts_uri("s3://someone-else/d/train.csv", "k") == "s3://ours/mlops/training/k"
    )


def test_git_commit_read_from_env_or_git_folder(tmp_path, monkeypatch):
    for var in ("MLOPS_GIT_COMMIT", "GIT_COMMIT", "GITHUB_SHA"):
        monkeypatch.delenv(var, raising=False)
    git = tmp_path / "repo" / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "refs" / "heads" / "main").write_text("abc123\n")
    (tmp_path / "repo" / "dags").mkdir()
    assert detect_git_commit(str(tmp_path / "repo" / "dags")) == "abc123"
    (git / "refs" / "heads" / "main").unlink()
    (git / "packed-refs").write_text("# pack-refs\ndef456 refs/heads/main\n")
    assert detect_git_commit(str(tmp_path / "repo" / "dags")) == "def456"
    monkeypatch.setenv("GIT_COMMIT", "fromenv")
    assert detect_git_commit(None) == "fromenv"


def test_run_status_names_used_are_mlflow_statuses():
    assert RunStatus.to_string(RunStatus.FAILED) == "FAILED"


def test_holdout_columns_are_kept_for_measurement_but_never_learned(client, experiment, train_uri):
    """A sensitive column excluded from the features stays in the holdout file, so the
    fairness gate can measure over it; the model never sees it."""
    config = config_for(train_uri, experiment, "label")
    config = config.model_copy(
        update={"exclude": [*config.exclude, "city"], "holdout_columns": ["city"]}
    )
    result = train_model(config, context(), Storage(), client)
    features = json.loads(client.get_run(result.run_id).data.tags["mlops.features"])
    assert "city" not in features
    holdout = pd.read_parquet(result.holdout_uri)
    assert "city" in holdout.columns and holdout["city"].notna().any()
