"""Batch shadow scoring: @challenger scored beside @champion, judged per labelled partition,
and promotion gated on that shadow evidence.

Real MLflow server, real Airflow task runner (``dag.test()``) for prediction, the decay check
and the final promotion; the refused promotions call the core workflow directly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from airflow.sdk import DAG
from test_delayed_labels import day_frame, land_labels
from test_drift_operator import (
    FEATURES,
    make_champion,
    states,
    unique_name,
    write_parquet,
    xcom_result,
)

from airflow_mlops.core.errors import ConfigError
from airflow_mlops.core.policy import FAIL, NOT_APPLICABLE, PASS, shadow_evidence_rule
from airflow_mlops.operators.performance import ModelPerformanceOperator
from airflow_mlops.operators.prediction import BatchPredictionOperator
from airflow_mlops.operators.registry import PromoteModelOperator

DAYS = ["2026-12-01", "2026-12-02", "2026-12-03"]
POLICY = {"change_thresholds": {"f1": {"min_delta": 0.0}}}


@pytest.fixture(scope="module")
def models(mlflow_server: str) -> dict[str, Any]:
    """v1 @champion sees only uninformative features; v2 @challenger sees them all."""
    from mlflow.tracking import MlflowClient

    name = unique_name("shadow")
    weak = make_champion(mlflow_server, name, reference_uri=None, features=["age", "channel"])
    strong = make_champion(mlflow_server, name, reference_uri=None, features=FEATURES)
    client = MlflowClient(tracking_uri=mlflow_server)
    client.set_registered_model_alias(name, "champion", weak["version"])
    client.set_registered_model_alias(name, "challenger", strong["version"])
    return {"name": name, "champion": weak, "challenger": strong}


def prediction_dag(name: str, inference: str, predictions: str) -> DAG:
    """One scoring task per day, each writing its day's partition (shadow included)."""
    with DAG(unique_name("predict"), schedule=None) as dag:
        for i, day in enumerate(DAYS):
            BatchPredictionOperator(
                task_id=f"predict_{i}",
                model_name=name,
                input_uri=inference,
                window={"last_partitions": 1},
                window_end=day,
                output_uri=f"{predictions}/",
                key_columns=["request_id"],
                shadow=True,
            )
    return dag


def decay_dag(**kwargs: Any) -> DAG:
    with DAG(unique_name("decay"), schedule=None) as dag:
        ModelPerformanceOperator(task_id="decay", **kwargs)
    return dag


def evaluation_and_registration(models: dict[str, Any]) -> tuple[dict, dict]:
    """A qualified evaluation of v2 against v1 (the policy rules passed)."""
    challenger = models["challenger"]
    evaluation = {
        "promote": True,
        "reason": "promoted: all 1 applicable rule(s) passed",
        "challenger": {"run_id": challenger["run_id"]},
        "champion": {"version": str(models["champion"]["version"])},
        "policy": POLICY,
        "model_name": models["name"],
    }
    registration = {
        "model_name": models["name"],
        "version": str(challenger["version"]),
        "run_id": challenger["run_id"],
    }
    return evaluation, registration


def promote(client: Any, models: dict[str, Any], min_delta: float) -> dict[str, Any]:
    from airflow_mlops.core.lineage import RunContext
    from airflow_mlops.core.promotion import PromotionOptions, ShadowRequirement, promote_challenger
    from airflow_mlops.core.storage import Storage

    evaluation, registration = evaluation_and_registration(models)
    outcome = promote_challenger(
        client,
        Storage(),
        evaluation,
        registration,
        approval=None,
        context=RunContext(dag_id="tests", run_id=unique_name("r"), task_id="promote"),
        trust=lambda: None,
        options=PromotionOptions(
            serving=None, shadow=ShadowRequirement(3, min_delta), model_card=True
        ),
    )
    # No card while the decision waits for shadow evidence (the card is written once).
    assert outcome.result["model_card"] is None
    return outcome.result


def test_shadow_evidence_over_three_labelled_partitions(
    run_dag, mlflow_conn, models, tmp_path, mlflow_server
):
    from mlflow.tracking import MlflowClient

    from airflow_mlops.core.shadow import TAG_SHADOW_PARTITIONS, read_shadow_records

    client = MlflowClient(tracking_uri=mlflow_server)
    name, champion, challenger = models["name"], models["champion"], models["challenger"]
    world = {day: day_frame(day, seed=80 + i) for i, day in enumerate(DAYS)}
    for day, frame in world.items():
        write_parquet(frame.drop(columns=["label"]), tmp_path / "inf" / f"dt={day}" / "p.parquet")
    predictions = tmp_path / "predictions"
    dag = prediction_dag(name, str(tmp_path / "inf"), str(predictions))

    run = run_dag(dag)
    files = sorted(p.relative_to(predictions).as_posix() for p in predictions.rglob("*.parquet"))
    again = run_dag(dag)  # a retry or rerun rewrites the same files

    assert set(states(run).values()) == set(states(again).values()) == {"success"}
    assert (
        sorted(p.relative_to(predictions).as_posix() for p in predictions.rglob("*.parquet"))
        == files
    )
    assert len(files) == 6 and sum(f.startswith("_shadow/") for f in files) == 3
    result = xcom_result(again, "predict_2")
    assert result["model_version"] == int(champion["version"])
    assert result["shadow"]["model_version"] == int(challenger["version"])
    assert result["shadow"]["rows"] == result["rows"]
    assert len(json.dumps(result)) < 2_000  # XCom stays small
    # Consumers read the predictions folder unchanged: the champion's rows only.
    consumer = pd.read_parquet(predictions)
    assert len(consumer) == 3 * len(world[DAYS[0]])
    assert set(consumer["model_version"]) == {int(champion["version"])}
    shadow = pd.read_parquet(predictions / "_shadow")
    assert set(shadow["model_version"]) == {int(challenger["version"])}
    assert list(shadow.columns[:5]) == [
        "request_id",
        "prediction",
        "score",
        "model_name",
        "model_version",
    ]

    # Labels for two days land: two shadow partitions, not enough for promotion.
    labels = tmp_path / "labels"
    land_labels(labels, "2026-12-04", [world[DAYS[0]], world[DAYS[1]]])
    decay = {
        "model_name": name,
        "labels_uri": str(labels),
        "predictions_uri": str(predictions),
        "id_columns": ["request_id"],
        "baseline_metrics": {"f1": 0.0},
    }
    first = xcom_result(run_dag(decay_dag(**decay)), "decay")
    assert first["shadow"]["partitions"] == 2 and first["shadow"]["records_logged"] == 2
    records = read_shadow_records(client, challenger["run_id"])
    assert [r["partition"] for r in records] == [f"dt={d}" for d in DAYS[:2]]
    for record in records:
        assert record["rows"] == len(world[DAYS[0]])
        assert record["champion_version"] == int(champion["version"])
        assert record["challenger"]["f1"] > record["champion"]["f1"] + 0.2
        difference = record["challenger"]["f1"] - record["champion"]["f1"]
        assert record["difference"]["f1"] == pytest.approx(difference)

    refused = promote(client, models, min_delta=0.0)
    assert refused["outcome"] == "not_promoted" and not refused["promoted"]
    assert refused["reason"].startswith("not promoted: shadow evidence from 2 of 3 partitions")
    assert refused["shadow"]["rule"] == "shadow_evidence"
    assert refused["shadow"]["verdict"] == FAIL and refused["shadow"]["observed"] == 2.0
    assert client.get_model_version_by_alias(name, "champion").version == champion["version"]

    # The third day's labels land; the check records it once (day 1 and 2 unchanged).
    land_labels(labels, "2026-12-05", [world[DAYS[2]]])
    second = xcom_result(run_dag(decay_dag(**decay)), "decay")
    assert second["shadow"]["partitions"] == 3 and second["shadow"]["records_logged"] == 1
    assert client.get_run(challenger["run_id"]).data.tags[TAG_SHADOW_PARTITIONS] == "3"

    # Three partitions, but a bound the difference does not clear: refused, saying so.
    too_high = promote(client, models, min_delta=0.9)
    assert too_high["outcome"] == "not_promoted"
    assert "shadow f1: mean improvement" in too_high["reason"]
    assert "< shadow_min_delta 0.9" in too_high["reason"]

    # Three partitions and the difference clears the bound: the promote task moves @champion.
    evaluation, registration = evaluation_and_registration(models)
    with DAG(unique_name("promote"), schedule=None) as promote_dag:
        PromoteModelOperator(
            task_id="promote",
            evaluation=evaluation,
            registration=registration,
            serving_check=False,
            require_shadow_partitions=3,
            shadow_min_delta=0.0,
        )
    done = xcom_result(run_dag(promote_dag), "promote")
    assert done["outcome"] == "promoted", done["reason"]
    assert done["shadow"]["verdict"] == PASS and done["shadow"]["observed"] > 0.2
    assert client.get_model_version_by_alias(name, "champion").version == challenger["version"]
    card = json.loads(
        Path(
            client.download_artifacts(challenger["run_id"], "mlops/model_card.json", str(tmp_path))
        ).read_text()
    )
    assert card["evaluation"]["shadow"]["verdict"] == PASS
    assert len(card["evaluation"]["shadow"]["records"]) == 3
    record = card["evaluation"]["shadow_record"]  # the reviewer's summary of the same records
    assert record["partitions"] == 3 and record["rule"] == {
        "verdict": PASS,
        "met": True,
        "detail": done["shadow"]["detail"],
    }


def test_the_shadow_evidence_rule_counts_only_records_beside_this_champion():
    def record(day: str, champion: int, c: float, b: float) -> dict[str, Any]:
        return {
            "partition": f"dt={day}",
            "champion_version": champion,
            "challenger": {"f1": c, "rmse": 1 - c},
            "champion": {"f1": b, "rmse": 1 - b},
        }

    records = [record("2026-11-30", 1, 0.9, 0.1)] + [record(d, 2, 0.8, 0.7) for d in DAYS]
    kwargs = {"required": 3, "metric": "f1", "min_delta": 0.0}
    assert shadow_evidence_rule(records, champion_version="2", **kwargs).verdict == PASS
    short = shadow_evidence_rule(records, champion_version="1", **kwargs)
    assert (short.verdict, short.detail) == (
        FAIL,
        "shadow evidence from 1 of 3 partitions (beside champion version 1)",
    )
    lower = shadow_evidence_rule(records, champion_version="2", **{**kwargs, "metric": "rmse"})
    assert lower.verdict == PASS and lower.observed == pytest.approx(0.1)  # lower is better
    worse = shadow_evidence_rule(records, champion_version="2", **{**kwargs, "min_delta": 0.2})
    assert worse.verdict == FAIL and "< shadow_min_delta 0.2" in worse.detail
    missing = shadow_evidence_rule(records, champion_version="2", **{**kwargs, "metric": "r2"})
    assert missing.verdict == FAIL and "fail closed" in missing.detail
    first = shadow_evidence_rule([], champion_version=None, **kwargs)
    assert first.verdict == NOT_APPLICABLE


def test_config_wires_shadow_and_refuses_half_configured_shadow():
    from airflow_mlops.factories.config import parse_config
    from airflow_mlops.factories.continuous_training import continuous_training_dag

    raw = {
        "name": "m",
        "data": {
            "train_uri": "/d/train/",
            "target": "y",
            "inference_uri": "/d/inference/",
            "predictions_uri": "/d/predictions/",
            "id_columns": ["request_id"],
        },
        "prediction": {"shadow": True},
        "promotion": {"require_shadow_partitions": 3, "shadow_min_delta": 0.01},
        "monitoring": {"current_uri": "/d/inference/", "decay": {"labels_uri": "/d/labels/"}},
    }
    dag = continuous_training_dag(parse_config(raw))
    assert dag.get_task("predict").shadow is True
    promote_task = dag.get_task("promote")
    assert promote_task.require_shadow_partitions == 3 and promote_task.shadow_min_delta == 0.01
    with pytest.raises(ConfigError, match=r"prediction\.shadow needs data\.inference_uri"):
        parse_config({**raw, "data": {**raw["data"], "predictions_uri": "/d/p.parquet"}})
    with pytest.raises(ConfigError, match=r"require_shadow_partitions needs prediction\.shadow"):
        parse_config({**raw, "prediction": {"shadow": False}})
    with pytest.raises(ConfigError, match="shadow_min_delta and shadow_metric need"):
        parse_config({**raw, "promotion": {"shadow_min_delta": 0.1}})
    with pytest.raises(ConfigError, match="shadow scoring needs model_name"):
        BatchPredictionOperator(
            task_id="p",
            input_uri="/d/i/",
            output_uri="/d/p/",
            model_uri="models:/m/1",
            key_columns=["id"],
            shadow=True,
        )
