"""Small data sets and DAG helpers shared by the reliability tests."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd

FEATURES = ("x1", "x2", "group")
TARGET = "label"

# Expectations that a clean table from :func:`clean_frame` meets and corrupted ones break.
SUITE: list[dict[str, Any]] = [
    {"type": "expect_table_columns_to_match_set", "kwargs": {"column_set": [*FEATURES, TARGET]}},
    {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "x1"}},
    {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "x2"}},
    {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": TARGET}},
    {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": TARGET, "value_set": [0, 1]}},
    {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "group", "value_set": ["a", "b"]}},
    {"type": "expect_column_values_to_be_between", "kwargs": {"column": "x1", "min_value": -10, "max_value": 10}},
    {"type": "expect_column_values_to_be_between", "kwargs": {"column": "x2", "min_value": -10, "max_value": 10}},
    {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 50}},
]  # fmt: skip


def clean_frame(rows: int = 200, seed: int = 7, noise: float = 0.0) -> pd.DataFrame:
    """Binary classification: label = x1 + x2 > 0 (a linear model gets it nearly right)."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=rows), rng.normal(size=rows)
    label = (x1 + x2 + noise * rng.normal(size=rows) > 0).astype(int)
    return pd.DataFrame(
        {
            "x1": x1.round(4),
            "x2": x2.round(4),
            "group": np.where(rng.random(rows) < 0.5, "a", "b"),
            TARGET: label,
        }
    )


def csv_bytes(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


# Estimators of increasing quality on clean_frame().
WORST = ("sklearn.dummy.DummyClassifier", {"strategy": "most_frequent"})
STUMP = ("sklearn.tree.DecisionTreeClassifier", {"max_depth": 1, "random_state": 0})
TREE = ("sklearn.tree.DecisionTreeClassifier", {"max_depth": 3, "random_state": 0})
BEST = ("sklearn.linear_model.LogisticRegression", {})

POLICY = {
    "value_thresholds": {"accuracy": {"lower": 0.6}},
    "change_thresholds": {"accuracy": {"direction": "higher", "min_delta": 0.0}},
}


# -- the real training / registry code, called directly (no Airflow) to set up a scene --------


def train_candidate(
    tracking_uri: str,
    data_uri: str,
    estimator: tuple[str, dict[str, Any]],
    *,
    model_name: str,
    experiment: str,
    run_id: str | None = None,
    task_id: str = "train",
) -> dict[str, Any]:
    """Train with ``core.training.train_model``; returns the training task's XCom dict."""
    import uuid

    import mlflow
    from mlflow.tracking import MlflowClient

    from airflow_mlops.core.lineage import RunContext
    from airflow_mlops.core.storage import Storage
    from airflow_mlops.core.training import train_model
    from airflow_mlops.core.training_job import TrainingJob

    mlflow.set_tracking_uri(tracking_uri)
    config = TrainingJob(
        train_uri=data_uri,
        target=TARGET,
        experiment_name=experiment,
        model_name=model_name,
        estimator=estimator[0],
        params=estimator[1],
        task="classification",
    )
    context = RunContext(dag_id="reliability", run_id=run_id or uuid.uuid4().hex, task_id=task_id)
    return train_model(config, context, Storage(), MlflowClient(tracking_uri)).to_dict()


def crown(
    tracking_uri: str,
    training_result: dict[str, Any],
    model_name: str,
    evaluated_champion: str | None = None,
) -> str:
    """Register a trained candidate and make it @champion with the real registry code."""
    from mlflow.tracking import MlflowClient

    from airflow_mlops.core.alias_history import Actor
    from airflow_mlops.core.alias_moves import promote_to_champion
    from airflow_mlops.core.lineage import RunContext
    from airflow_mlops.core.registry import register_version

    client = MlflowClient(tracking_uri)
    context = RunContext(dag_id="reliability", run_id=training_result["run_id"], task_id="crown")
    registration = register_version(
        client,
        model_name,
        training_result["model_uri"],
        context=context,
        run_id=training_result["run_id"],
    )
    promote_to_champion(
        client,
        model_name,
        registration.version,
        evaluated_champion=evaluated_champion,
        actor=Actor(reason="champion set up by the test", context=context),
    )
    return registration.version


def runs_of(tracking_uri: str, experiment: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return client.search_runs([found.experiment_id], max_results=1000)


def versions_of(tracking_uri: str, model_name: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    return sorted(
        client.search_model_versions(f"name = '{model_name}'"), key=lambda mv: int(mv.version)
    )
