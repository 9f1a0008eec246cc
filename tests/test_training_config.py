"""Issue #15 item 1: one training config from YAML to operator to core, and the task learnt
from the estimator's class at run time, never from its name.

The acceptance run builds one DAG of four factory-made CT groups (LogisticRegression, Ridge,
Lasso, SVR) from pipeline configs without ``training.task`` and runs it once with Airflow's
real task runner against the MLflow server fixture, on 60 rows.
"""

from __future__ import annotations

import logging
import re
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import mlflow_connection_env, serialize_dag, stored_xcom, task_states
from sklearn.linear_model import LogisticRegression

from airflow_mlops.core.errors import DataError
from airflow_mlops.core.training_config import TrainingConfig
from airflow_mlops.core.training_data import prepare_data
from airflow_mlops.core.training_job import TrainingJob
from airflow_mlops.factories.config import parse_config
from airflow_mlops.operators.training import TrainModelOperator

CLASSIFICATION_METRICS = {"accuracy", "precision", "recall", "f1", "roc_auc", "log_loss"}
REGRESSION_METRICS = {"rmse", "mae", "r2"}
# estimator -> (target, task it must train as)
ESTIMATORS = {
    "sklearn.linear_model.LogisticRegression": ("label", "classification"),
    "sklearn.linear_model.Ridge": ("score", "regression"),
    "sklearn.linear_model.Lasso": ("score", "regression"),
    "sklearn.svm.SVR": ("score", "regression"),
}


def small_frame(n: int = 60) -> pd.DataFrame:
    """``label``: 0/1 classes; ``score``: a linear target with few distinct integer values,
    which a guess from the target alone would call classes."""
    rng = np.random.default_rng(7)
    frame = pd.DataFrame({"x1": rng.normal(size=n), "x2": rng.normal(size=n)})
    frame["label"] = (frame["x1"] + frame["x2"] > 0).astype(int)
    frame["score"] = np.clip(np.round(3 * frame["x1"] + frame["x2"] + 5), 0, 9).astype(int)
    return frame


def pipeline_raw(name: str, train_uri: str, estimator: str, target: str) -> dict[str, Any]:
    other = "score" if target == "label" else "label"
    return {
        "name": name,
        "retries": 0,
        "data": {"train_uri": train_uri, "target": target, "exclude": [other]},
        "training": {"estimator": estimator},
        "promotion": {"serving_check": False},
        "monitoring": {"enabled": False},
    }


def job(estimator: Any, target: str, **settings: Any) -> TrainingJob:
    other = "score" if target == "label" else "label"
    return TrainingJob(
        train_uri="/data/t.csv",
        target=target,
        experiment_name="unused",
        exclude=[other],
        estimator=estimator,
        **settings,
    )


def prepared_task(config: TrainingJob, frame: pd.DataFrame | None = None) -> str:
    frame = small_frame() if frame is None else frame
    return prepare_data(config, frame, "sha", len(frame)).task


# -- one shape, one set of defaults -----------------------------------------------------------
def test_yaml_operator_and_core_share_one_config_and_its_defaults():
    defaults = TrainingConfig()
    assert (defaults.holdout_fraction, defaults.seed) == (0.25, 42)
    assert "stratify" not in TrainingConfig.model_fields  # the split is hash-based (#16)
    assert defaults.estimator is None and defaults.task is None
    yaml_section = parse_config({"name": "p", "data": {"train_uri": "/d/t.csv", "target": "y"}})
    assert yaml_section.training == defaults
    operator = TrainModelOperator(
        task_id="t", train_uri="/d/x.csv", target="y", experiment_name="e"
    )
    core = operator.training_config()
    assert isinstance(core, TrainingConfig)
    settings = set(TrainingConfig.model_fields) - {"experiment_name"}
    assert {name: getattr(core, name) for name in settings} == {
        name: getattr(defaults, name) for name in settings
    }


def test_the_factory_hands_the_yaml_section_to_the_operator_intact():
    from airflow_mlops.factories import continuous_training_dag

    raw = pipeline_raw("intact", "/data/t.csv", "sklearn.svm.SVR", "score")
    raw["training"] = {
        "estimator": "sklearn.svm.SVR",
        "params": {"C": 2.0},
        "holdout_fraction": 0.3,
        "seed": 5,
        "search": {"method": "grid", "space": {"C": [1.0, 2.0]}, "cv": 2},
    }
    raw["data"] = {**raw["data"], "window": {"last": "7d", "max_rows": 500}, "key": ["x1"]}
    config = parse_config(raw)
    train = continuous_training_dag(config).get_task("train")
    built = train.training_config()
    # data.window and data.key travel with it (#16).
    assert built.window == config.data.window and built.window.max_rows == 500
    assert built.key == ["x1"] and built.split.key == ("x1",)
    for name in TrainingConfig.model_fields:
        expected = getattr(config.training, name)
        assert getattr(built, name) == (
            config.experiment_name if name == "experiment_name" else expected
        ), name


def test_hand_written_operator_arguments_override_a_given_config():
    base = TrainingConfig(estimator="sklearn.svm.SVR", holdout_fraction=0.4, seed=3)
    op = TrainModelOperator(
        task_id="t",
        train_uri="/d/x.csv",
        target="y",
        experiment_name="e",
        training=base,
        seed="{{ params.seed }}",
    )
    assert op.estimator == "sklearn.svm.SVR" and op.holdout_fraction == 0.4
    op.seed = "9"  # as rendered
    config = op.training_config()
    assert (config.estimator, config.holdout_fraction, config.seed) == ("sklearn.svm.SVR", 0.4, 9)


def test_a_training_mapping_with_an_unknown_key_is_refused():
    from airflow_mlops.core.errors import ConfigError

    with pytest.raises(ConfigError, match="training has unknown field 'holdout'"):
        TrainModelOperator(task_id="t", train_uri="/d/x.csv", target="y", training={"holdout": 0.3})


# -- the task, from the estimator class --------------------------------------------------------
@pytest.mark.parametrize(("estimator", "expected"), [(k, v) for k, v in ESTIMATORS.items()])
def test_the_task_comes_from_the_estimator_class(estimator, expected):
    target, task = expected
    assert prepared_task(job(estimator, target)) == task


def test_a_name_never_decides_the_task():
    class RegressionLookingName(LogisticRegression):
        """A classifier whose name says 'Regression'."""

    assert prepared_task(job(RegressionLookingName, "label")) == "classification"
    # A user factory's result answers the same way.
    assert prepared_task(job(lambda: LogisticRegression(), "label")) == "classification"


def test_an_explicit_task_still_wins():
    assert prepared_task(job("sklearn.linear_model.Ridge", "score", task="classification")) == (
        "classification"
    )


def test_an_estimator_saying_neither_falls_back_to_the_target_and_logs_it(caplog):
    caplog.set_level(logging.INFO, logger="airflow_mlops.core.training_data")
    # KMeans is neither a classifier nor a regressor.
    assert prepared_task(job("sklearn.cluster.KMeans", "label")) == "classification"
    assert "inferred from target column 'label'" in caplog.text
    assert "sklearn.cluster.KMeans is neither a classifier nor a regressor" in caplog.text
    floats = small_frame().assign(label=lambda f: f["x1"] * 2.5)
    assert prepared_task(job("sklearn.cluster.KMeans", "label"), floats) == "regression"


def test_without_an_estimator_the_target_decides_and_picks_the_random_forest(caplog):
    caplog.set_level(logging.INFO, logger="airflow_mlops.core.training_data")
    floats = small_frame().assign(score=lambda f: f["x1"] * 2.5)
    assert prepared_task(job(None, "score"), floats) == "regression"
    assert "RandomForestRegressor" in caplog.text


def test_the_split_error_names_settings_the_yaml_really_has():
    frame = small_frame().assign(label=0)
    frame.loc[0, "label"] = 1  # a class with a single row: one side of the split lacks it
    with pytest.raises(DataError, match=r"side of the hash split holds 1 class") as error:
        prepared_task(job("sklearn.linear_model.LogisticRegression", "label"), frame)
    named = re.findall(r"training\.(\w+)", str(error.value))
    assert named and set(named) <= set(TrainingConfig.model_fields), str(error.value)


def test_stratify_is_refused_in_yaml_and_operator_because_the_split_is_hash_based():
    from airflow_mlops.core.errors import ConfigError

    raw = pipeline_raw("p", "/data/t.csv", "sklearn.linear_model.LogisticRegression", "label")
    raw["training"] = {**raw["training"], "stratify": False}
    with pytest.raises(ConfigError, match=r"training: .*stratify cannot be honoured.*hash-based"):
        parse_config(raw)
    with pytest.raises(ConfigError, match=r"t: stratify cannot be honoured.*hash-based"):
        TrainModelOperator(task_id="t", train_uri="/d/x.csv", target="y", stratify=True)
    with pytest.raises(ConfigError, match=r"stratify cannot be honoured"):
        TrainModelOperator(task_id="t", train_uri="/d/x", target="y", training={"stratify": 1})


# -- acceptance: YAML without task: -> factory -> operator -> core, through Airflow ---------------
@pytest.fixture(scope="module")
def trained(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One DAG, one CT group per estimator, one dag.test() run."""
    from airflow.sdk import DAG

    from airflow_mlops.factories import continuous_training_group
    from airflow_mlops.factories.continuous_training import ct_params

    folder: Path = tmp_path_factory.mktemp("task_from_class")
    data = folder / "train.csv"
    small_frame().to_csv(data, index=False)
    suffix = uuid.uuid4().hex[:8]
    configs = {
        estimator.rsplit(".", 1)[1].lower(): parse_config(
            pipeline_raw(
                f"{estimator.rsplit('.', 1)[1].lower()}_{suffix}", str(data), estimator, target
            )
        )
        for estimator, (target, _) in ESTIMATORS.items()
    }
    first = next(iter(configs.values()))
    with DAG(f"task_from_class_{suffix}", schedule=None, params=ct_params(first)) as dag:
        for group, config in configs.items():
            continuous_training_group(config, group_id=group)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", mlflow_connection_env(mlflow_server))
        serialize_dag(dag)
        dag_run = dag.test()
    return {"dag_run": dag_run, "groups": list(configs)}


@pytest.mark.parametrize(("estimator", "expected"), [(k, v) for k, v in ESTIMATORS.items()])
def test_yaml_without_task_trains_as_the_estimator_class_says(trained, estimator, expected):
    dag_run, group = trained["dag_run"], estimator.rsplit(".", 1)[1].lower()
    states = {t: s for (t, _), s in task_states(dag_run).items() if t.startswith(f"{group}.")}
    assert states and set(states.values()) == {"success"}, states
    _, task = expected
    train = stored_xcom(dag_run, f"{group}.train")
    assert train["task"] == task
    metrics = CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS
    assert set(train["metrics"]) == metrics
    # The default policy follows the trained task: f1 or rmse.
    evaluate = stored_xcom(dag_run, f"{group}.evaluate")
    policy_metric = "f1" if task == "classification" else "rmse"
    assert list(evaluate["policy"]["change_thresholds"]) == [policy_metric], evaluate["policy"]
    assert stored_xcom(dag_run, f"{group}.summary")["outcome"] == "promoted"


def test_a_preprocessing_path_must_name_the_users_own_module():
    from airflow_mlops.core.errors import EstimatorNotAllowedError
    from airflow_mlops.core.estimators import resolve_preprocessing

    frame = small_frame()
    for path in ("sklearn.datasets.fetch_openml", "os.system"):
        config = job("sklearn.svm.SVR", "score", preprocessing=path)
        with pytest.raises(EstimatorNotAllowedError, match="preprocessing"):
            resolve_preprocessing(config, frame)
