"""Evaluation against the real MLflow server: same holdout, hash check, slices, the record.

Challengers are produced by the real training code (``core.training.train_model``), so the
tags and the holdout file are exactly what evaluation reads in production.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from airflow_mlops.core.errors import ConfigError, DataError, ModelUriError

POLICY = {
    "value_thresholds": {"accuracy": {"lower": 0.6}},
    "change_thresholds": {"accuracy": {"direction": "higher", "min_delta": 0.0}},
}

# Estimators of increasing quality on ``make_dataset`` (target = x1 + x2 > 0).
WORST = ("sklearn.dummy.DummyClassifier", {"strategy": "most_frequent"})
STUMP = ("sklearn.tree.DecisionTreeClassifier", {"max_depth": 1, "random_state": 0})
TREE = ("sklearn.tree.DecisionTreeClassifier", {"max_depth": 3, "random_state": 0})
BEST = ("sklearn.linear_model.LogisticRegression", {})


# -- helpers shared with test_registry.py and test_promotion_dag.py ---------------------------


def make_dataset(path: Path, rows: int = 400, seed: int = 7) -> str:
    """A classification table where a linear model beats a tree stump beats a constant."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=rows), rng.normal(size=rows)
    frame = pd.DataFrame(
        {
            "x1": x1,
            "x2": x2,
            "group": np.where(rng.random(rows) < 0.5, "a", "b"),
            "label": (x1 + x2 > 0).astype(int),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return str(path)


def train(
    tracking_uri: str,
    data_uri: str,
    estimator: tuple[str, dict[str, Any]],
    *,
    model_name: str,
    experiment: str = "eval-tests",
    task_id: str | None = None,
) -> dict[str, Any]:
    """Train with the real training code; returns the training task's XCom dict."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from airflow_mlops.core.lineage import RunContext
    from airflow_mlops.core.storage import Storage
    from airflow_mlops.core.training import train_model
    from airflow_mlops.core.training_job import TrainingJob

    mlflow.set_tracking_uri(tracking_uri)
    config = TrainingJob(
        train_uri=data_uri,
        target="label",
        experiment_name=experiment,
        model_name=model_name,
        estimator=estimator[0],
        params=estimator[1],
        task="classification",
    )
    context = RunContext(dag_id="tests", run_id=uuid.uuid4().hex, task_id=task_id or "train")
    return train_model(config, context, Storage(), MlflowClient(tracking_uri)).to_dict()


def unique_name(prefix: str = "model") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# -- tests ----------------------------------------------------------------------------------


def test_first_model_evaluation_scores_on_the_recorded_holdout(client, tracking, tmp_path):
    from airflow_mlops.core.evaluation import (
        DECISION_ARTIFACT,
        challenger_from_training,
        evaluate_challenger,
        log_record,
        tag_decision,
    )
    from airflow_mlops.core.storage import Storage

    name = unique_name()
    result = train(tracking, make_dataset(tmp_path / "d.csv"), STUMP, model_name=name)
    challenger = challenger_from_training(client, result)
    assert challenger.holdout_sha256 == result["holdout_sha256"]
    assert challenger.target == "label" and challenger.task == "classification"
    assert challenger.model_name == name

    evaluation = evaluate_challenger(
        client, Storage(), challenger, model_name=name, policy=POLICY, slices={"group": ["a", "b"]}
    )
    record = evaluation.record
    assert record["first_model"] is True and record["promote"] is True
    assert record["champion"] is None
    assert "first model" in record["reason"]
    # Same rows and same metric code as training: identical holdout metrics.
    assert record["challenger_metrics"] == pytest.approx(result["metrics"])
    assert record["holdout"]["sha256"] == result["holdout_sha256"]
    assert set(record["slice_metrics"]) == {"group=a", "group=b"}
    rows = [s["rows"] for s in record["slice_metrics"].values()]
    assert sum(rows) == record["holdout"]["rows"]

    uri = log_record(client, result["run_id"], record, DECISION_ARTIFACT)
    tag_decision(client, result["run_id"], record)
    assert uri.endswith("mlops/decision.json")
    import mlflow

    stored = mlflow.artifacts.load_dict(uri)
    assert stored["reason"] == record["reason"]
    tags = client.get_run(result["run_id"]).data.tags
    assert tags["mlops.decision.promote"] == "true"
    json.dumps(record, allow_nan=False)


def test_challenger_and_champion_on_the_same_rows_with_slices(client, tracking, tmp_path):
    from airflow_mlops.core.evaluation import challenger_from_training, evaluate_challenger
    from airflow_mlops.core.lineage import RunContext
    from airflow_mlops.core.registry import Champion, register_version, resolve_champion
    from airflow_mlops.core.storage import Storage

    name = unique_name()
    data = make_dataset(tmp_path / "d.csv")
    stump = train(tracking, data, STUMP, model_name=name, task_id="t1")
    reg = register_version(
        client, name, stump["model_uri"], context=RunContext(task_id="r1"), run_id=stump["run_id"]
    )
    client.set_registered_model_alias(name, "champion", reg.version)
    assert resolve_champion(client, name) == Champion(name, reg.version, stump["run_id"])

    best = train(tracking, data, BEST, model_name=name, task_id="t2")
    evaluation = evaluate_challenger(
        client,
        Storage(),
        challenger_from_training(client, best),
        model_name=name,
        policy=POLICY,
        slices={"group": ["a", "b", "zzz"]},
    )
    record = evaluation.record
    assert record["champion"]["version"] == reg.version
    assert record["champion"]["model_uri"] == f"models:/{name}/{reg.version}"
    assert record["champion_metrics"] == pytest.approx(stump["metrics"])
    assert record["challenger_metrics"]["accuracy"] > record["champion_metrics"]["accuracy"]
    assert record["promote"] is True, record["reason"]
    # Same file, same stable split: the champion trained on none of the challenger's holdout.
    assert record["comparison"]["basis"] == "membership", record["comparison"]
    assert record["rows_excluded"] == 0
    assert record["rows_compared"] == record["holdout"]["rows"]
    difference = record["intervals"]["accuracy"]["difference"]
    assert difference["low"] <= difference["estimate"] <= difference["high"]
    assert f"rows compared {record['rows_compared']}, excluded 0" in record["reason"]
    empty = record["slice_metrics"]["group=zzz"]
    assert empty == {"rows": 0, "challenger": None, "champion": None}
    slice_rules = [r for r in record["rules"] if r["rule"] == "slice"]
    assert {r["slice"] for r in slice_rules} == {"group=a", "group=b", "group=zzz"}
    assert [r["verdict"] for r in slice_rules if r["slice"] == "group=zzz"] == ["not_applicable"]

    # The reverse comparison (stump challenging the linear model) is refused.
    reg_best = register_version(
        client, name, best["model_uri"], context=RunContext(task_id="r2"), run_id=best["run_id"]
    )
    reverse = evaluate_challenger(
        client,
        Storage(),
        challenger_from_training(client, stump),
        model_name=name,
        policy=POLICY,
        champion=Champion(name, reg_best.version, best["run_id"]),
    )
    assert reverse.record["promote"] is False
    assert "not promoted" in reverse.record["reason"]


def test_holdout_hash_mismatch_is_an_error(client, tracking, tmp_path):
    from airflow_mlops.core.evaluation import challenger_from_training, evaluate_challenger
    from airflow_mlops.core.storage import Storage

    name = unique_name()
    result = train(tracking, make_dataset(tmp_path / "d.csv"), STUMP, model_name=name)
    holdout = Path(result["holdout_uri"])
    frame = pd.read_parquet(holdout)
    frame.loc[0, "label"] = 1 - frame.loc[0, "label"]  # one flipped label
    frame.to_parquet(holdout, index=False)

    challenger = challenger_from_training(client, result)
    with pytest.raises(DataError, match="the file changed since training") as info:
        evaluate_challenger(client, Storage(), challenger, model_name=name, policy=POLICY)
    assert result["holdout_sha256"] in str(info.value)
    assert "mlops.holdout.sha256" in str(info.value)


def test_xcom_that_disagrees_with_the_run_is_refused(client, tracking, tmp_path):
    from airflow_mlops.core.evaluation import challenger_from_training

    result = train(tracking, make_dataset(tmp_path / "d.csv"), STUMP, model_name=unique_name())
    tampered = {**result, "holdout_sha256": "0" * 64}
    with pytest.raises(DataError, match=r"training_result\['holdout_sha256'\] is '0000"):
        challenger_from_training(client, tampered)
    with pytest.raises(ConfigError, match="at least 'run_id'"):
        challenger_from_training(client, {"model_uri": result["model_uri"]})


def test_run_without_lineage_tags_or_with_a_non_registry_model_uri_is_refused(client, tracking):
    experiment = client.create_experiment(f"bare-{uuid.uuid4().hex[:6]}")
    bare = client.create_run(experiment).info.run_id
    from airflow_mlops.core.evaluation import challenger_from_training

    with pytest.raises(DataError, match="lacks the lineage tags"):
        challenger_from_training(client, {"run_id": bare})

    tags = {
        "mlops.model_uri": "file:///etc/passwd",
        "mlops.holdout.uri": "/tmp/h.parquet",
        "mlops.holdout.sha256": "abc",
        "mlops.target": "label",
        "mlops.task": "classification",
    }
    sneaky = client.create_run(experiment, tags=tags).info.run_id
    with pytest.raises(ModelUriError, match="file:// URIs read arbitrary local files"):
        challenger_from_training(client, {"run_id": sneaky})


def test_unknown_slice_column_names_the_column(client, tracking, tmp_path):
    from airflow_mlops.core.evaluation import challenger_from_training, evaluate_challenger
    from airflow_mlops.core.storage import Storage

    result = train(tracking, make_dataset(tmp_path / "d.csv"), STUMP, model_name=unique_name())
    with pytest.raises(ConfigError, match="slices: column 'country' is not in the holdout"):
        evaluate_challenger(
            client,
            Storage(),
            challenger_from_training(client, result),
            model_name="m",
            policy=POLICY,
            slices={"country": ["fr"]},
        )


def test_slice_masks_compare_json_text_with_numeric_columns():
    from airflow_mlops.core.evaluation import slice_masks

    frame = pd.DataFrame({"k": [1, 2, 2, 3]})
    masks = slice_masks(frame, {"k": [2, "3"]})
    assert masks["k=2"].tolist() == [False, True, True, False]
    assert masks["k=3"].tolist() == [False, False, False, True]
    with pytest.raises(ConfigError, match=r"slices\['k'\] must be a list"):
        slice_masks(frame, {"k": "2"})


def test_operator_refuses_an_unknown_evaluation_on_or_min_rows_at_parse_time():
    from airflow_mlops.operators.evaluation import EvaluateModelOperator

    with pytest.raises(ConfigError, match="evaluation_on must be one of"):
        EvaluateModelOperator(task_id="e", training_result={}, evaluation_on="everything")
    with pytest.raises(ConfigError, match="min_rows must be a positive integer"):
        EvaluateModelOperator(task_id="e", training_result={}, min_rows=0)
    templated = EvaluateModelOperator(
        task_id="e", training_result={}, evaluation_on="{{ params.on }}", min_rows=80
    )
    assert templated.min_rows == 80
