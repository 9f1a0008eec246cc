"""Delayed labels: predictions by partition, labels landing later, decay judged per partition.

Real MLflow server, real Airflow task runner (``dag.test()``), moto S3 for the prefix case.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from airflow.sdk import DAG
from test_drift_operator import (
    FEATURES,
    labelled_frame,
    make_champion,
    retrain_events,
    states,
    unique_name,
    write_parquet,
    xcom_result,
)

from airflow_mlops.core.performance import DecaySettings, check_partitioned_performance
from airflow_mlops.core.prediction_layout import partition_key, partition_output_uri
from airflow_mlops.operators.performance import ModelPerformanceOperator
from airflow_mlops.operators.prediction import BatchPredictionOperator

DAYS = ["2026-12-01", "2026-12-02", "2026-12-03"]
ROWS = 300


def day_number(day: str) -> int:
    return (pd.Timestamp(day) - pd.Timestamp("1970-01-01")).days


def day_frame(day: str, seed: int) -> pd.DataFrame:
    """One day's requests: ids unique across days, features, and the true label."""
    frame = labelled_frame(ROWS, seed=seed)
    frame.insert(0, "request_id", [f"{day}-{i}" for i in range(ROWS)])
    return frame


def flipped(frame: pd.DataFrame, share: float, seed: int) -> pd.DataFrame:
    """The world changed: ``share`` of the labels flip, the model stays the same."""
    out = frame.copy()
    mask = np.random.default_rng(seed).random(len(out)) < share
    out.loc[mask, "label"] = 1 - out.loc[mask, "label"]
    return out


@pytest.fixture(scope="module")
def champion(mlflow_server: str) -> dict[str, Any]:
    """A registered champion with its promotion-time f1 recorded as training does."""
    from mlflow.tracking import MlflowClient
    from sklearn.metrics import f1_score

    name = unique_name("delayed")
    facts = make_champion(mlflow_server, name, reference_uri=None)
    holdout = labelled_frame(2_000, seed=31)
    baseline = f1_score(holdout["label"], facts["model"].predict(holdout[FEATURES]))
    MlflowClient(tracking_uri=mlflow_server).log_metric(facts["run_id"], "holdout_f1", baseline)
    return {"name": name, "baseline_f1": baseline, **facts}


@pytest.fixture(scope="module")
def world() -> dict[str, pd.DataFrame]:
    """Three days of requests; on the third the world has changed (labels flip)."""
    frames = {day: day_frame(day, seed=60 + i) for i, day in enumerate(DAYS)}
    frames[DAYS[2]] = flipped(frames[DAYS[2]], share=0.4, seed=7)
    return frames


def land_inference(root: Path, world: dict[str, pd.DataFrame]) -> str:
    for day, frame in world.items():
        write_parquet(frame.drop(columns=["label"]), root / f"dt={day}" / "part-0.parquet")
    return str(root)


def land_labels(root: Path, landed_on: str, frames: list[pd.DataFrame]) -> None:
    """Labels land as their own partition, named by the day they arrived."""
    labels = pd.concat([f[["request_id", "label"]] for f in frames], ignore_index=True)
    write_parquet(labels, root / f"dt={landed_on}" / "part-0.parquet")


def prediction_dag(**kwargs: Any) -> DAG:
    with DAG(unique_name("predict"), schedule=None) as dag:
        BatchPredictionOperator(task_id="predict", **kwargs)
    return dag


def decay_dag(**kwargs: Any) -> DAG:
    with DAG(unique_name("decay"), schedule=None) as dag:
        ModelPerformanceOperator(task_id="decay", **kwargs)
    return dag


# -- batch prediction by partition -----------------------------------------------------------


def test_predictions_are_written_one_partition_per_run_with_ids_and_version(
    run_dag, mlflow_conn, champion, world, tmp_path
):
    inference = land_inference(tmp_path / "inference", world)
    predictions = tmp_path / "predictions"
    dag = prediction_dag(
        model_name=champion["name"],
        input_uri=inference,
        window={"last_partitions": 1},
        window_end="{{ dag_run.conf['day'] }}",
        output_uri=f"{predictions}/",
        key_columns=["request_id"],
    )

    first = run_dag(dag, day=DAYS[0])
    second = run_dag(dag, day=DAYS[1])
    again = run_dag(dag, day=DAYS[1])  # a rerun of the partition rewrites it

    assert {states(r)["predict"] for r in (first, second, again)} == {"success"}
    files = sorted(p.relative_to(predictions).as_posix() for p in predictions.rglob("*"))
    result = xcom_result(again, "predict")
    name = Path(result["output_uri"]).name
    assert files == [
        f"dt={DAYS[0]}",
        f"dt={DAYS[0]}/{name}",
        f"dt={DAYS[1]}",
        f"dt={DAYS[1]}/{name}",
    ]
    assert result["partition"] == f"dt={DAYS[1]}" and result["input_files"] == 1
    assert len(result["input_sha256"]) == 16  # the manifest content hash of the window
    assert xcom_result(second, "predict")["output_sha256"] == result["output_sha256"]
    out = pd.read_parquet(predictions / f"dt={DAYS[1]}" / name)
    assert list(out.columns) == ["request_id", "prediction", "score", "model_name", "model_version"]
    assert out["request_id"].tolist() == world[DAYS[1]]["request_id"].tolist()
    assert set(out["model_version"]) == {int(champion["version"])}
    assert set(out["model_name"]) == {champion["name"]}
    expected = champion["model"].predict_proba(world[DAYS[1]][FEATURES])[:, 1]
    np.testing.assert_allclose(out["score"], expected, atol=1e-9)


def test_a_folder_output_without_ids_is_refused_at_parse_time():
    from airflow_mlops.core.errors import ConfigError

    with pytest.raises(ConfigError, match="key_columns"):
        prediction_dag(model_name="m", input_uri="/d/in.parquet", output_uri="/d/predictions/")
    with pytest.raises(ConfigError, match="cannot name a folder"):
        partition_output_uri("/d/p", "../etc", "abc")
    assert partition_key("dt=2026-12-01T00:00:00+00:00") == ("dt", "2026-12-01")


# -- the decay check over partitions ---------------------------------------------------------


@pytest.fixture(scope="module")
def predicted(champion, world, mlflow_server, tmp_path_factory) -> Path:
    """The three days' predictions, written by the batch scorer one partition per day."""
    import tempfile

    from mlflow.tracking import MlflowClient

    from airflow_mlops.core.mlflow_settings import MlflowSettings, mlflow_environment
    from airflow_mlops.core.prediction import load_model, resolve_model_version, score_dataset
    from airflow_mlops.core.storage import Storage

    root = tmp_path_factory.mktemp("delayed")
    inputs = root / "inputs"
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    resolved = resolve_model_version(client, f"models:/{champion['name']}@champion")
    settings = MlflowSettings(tracking_uri=mlflow_server)
    with tempfile.TemporaryDirectory() as model_dir, mlflow_environment(settings):
        model = load_model(client, resolved.pinned_uri, model_dir)
        for day, frame in world.items():
            input_uri = write_parquet(frame.drop(columns=["label"]), inputs / f"{day}.parquet")
            score_dataset(
                model=model,
                resolved=resolved,
                storage=Storage(),
                input_uri=input_uri,
                output_uri=partition_output_uri(str(root / "predictions"), day, "w1"),
                key_columns=["request_id"],
                with_scores=True,
            )
    return root


def test_labels_arriving_later_are_pending_then_scored_and_decay_emits_the_signal(
    run_dag, mlflow_conn, champion, world, predicted, tmp_path, mlflow_server
):
    from mlflow.tracking import MlflowClient

    labels = tmp_path / "labels"
    day1, day2, day3 = (world[d] for d in DAYS)
    # Day 1 fully labelled, day 2 half labelled (below 0.8), day 3 not yet.
    land_labels(labels, "2026-12-04", [day1, day2.iloc[: ROWS // 2]])
    kwargs = {
        "model_name": champion["name"],
        "labels_uri": str(labels),
        "predictions_uri": str(predicted / "predictions"),
        "id_columns": ["request_id"],
    }

    first = xcom_result(run_dag(decay_dag(**kwargs)), "decay")

    assert first["mode"] == "partitions" and first["decayed"] is False, first["reason"]
    assert first["partitions"] == {"total": 3, "scored": 1, "pending": 2}
    assert first["pending"] == [f"dt={DAYS[1]}", f"dt={DAYS[2]}"]
    assert first["verdict_partitions"] == [f"dt={DAYS[0]}"]
    assert first["check"]["metric"] == "f1" and not first["check"]["decayed"]
    assert [p["coverage"] for p in first["recent"]] == [1.0, 0.5, 0.0]
    assert [p["metrics"] is None for p in first["recent"]] == [False, True, True]
    assert retrain_events(champion["name"]) == []

    # The rest of day 2 and all of day 3 land two days later.
    land_labels(labels, "2026-12-06", [day2.iloc[ROWS // 2 :], day3])
    dag_run = run_dag(decay_dag(**kwargs))
    second = xcom_result(dag_run, "decay")

    assert states(dag_run)["decay"] == "success"
    assert second["partitions"] == {"total": 3, "scored": 3, "pending": 0}
    assert second["verdict_partitions"] == [f"dt={DAYS[2]}"]  # the newest, enough rows
    assert second["decayed"] is True and second["check"]["degradation"] > 0.05
    assert second["reason"].startswith("performance decay: f1 ")
    assert second["retrain_signal"]["emit"] is True
    events = retrain_events(champion["name"])
    assert len(events) == 1 and events[0]["extra"]["trigger"] == "performance_decay"
    # Accuracy over time: one point per partition (day 1 logged once, not twice), by day.
    client = MlflowClient(tracking_uri=mlflow_server)
    history = client.get_metric_history(champion["run_id"], "decay/accuracy")
    assert sorted(m.step for m in history) == [day_number(d) for d in DAYS]
    by_step = {m.step: m.value for m in history}
    assert by_step[day_number(DAYS[2])] < by_step[day_number(DAYS[0])] - 0.1
    coverage = client.get_metric_history(champion["run_id"], "decay/label_coverage")
    assert {m.value for m in coverage} == {1.0}
    assert min(m.timestamp for m in coverage) == day_number(DAYS[0]) * 86_400_000


@contextmanager
def session_on(client: Any) -> Any:
    yield client


def test_coverage_below_the_threshold_never_counts_as_good(client, champion, world, predicted):
    """Early labels for the rows the model got right look perfect: still pending, no verdict."""
    import fsspec

    from airflow_mlops.core.champion import read_champion
    from airflow_mlops.core.storage import Storage

    root = predicted / "biased"
    day3 = world[DAYS[2]]
    right = day3[champion["model"].predict(day3[FEATURES]) == day3["label"]]
    land_labels(root / "labels", "2026-12-04", [right.iloc[: ROWS // 2]])
    outcome = check_partitioned_performance(
        read_champion(client, champion["name"]),
        lambda uri: fsspec.filesystem("file"),
        Storage(),
        predictions_uri=str(predicted / "predictions"),
        labels_uri=str(root / "labels"),
        id_columns=["request_id"],
        settings=DecaySettings(min_labelled_rows=10, min_label_coverage=0.8),
        mlflow_session=lambda: session_on(client),
        report_uri=str(root / "performance.json"),
        mlflow_artifact="monitoring/performance/biased/performance.json",
    )
    record = outcome.record
    assert record["decayed"] is False and record["check"] is None and record["metrics"] is None
    assert record["reason"].startswith("no verdict: no scored partition predicted by version")
    assert "3 partition(s) pending (label coverage below 0.8)" in record["reason"]
    assert [p["status"] for p in record["partitions"]] == ["pending"] * 3
    assert all(p["metrics"] is None for p in record["partitions"])
    assert record["partitions"][2]["coverage"] == 0.5


def test_s3_prefixes_for_predictions_and_labels(
    s3_bucket, s3_server, client, champion, world, predicted
):
    """Predictions and labels as partitioned S3 prefixes, read through the StorageHook."""
    import boto3

    from airflow_mlops.core.champion import read_champion
    from airflow_mlops.hooks.storage import StorageHook

    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    for path in (predicted / "predictions").rglob("*.parquet"):
        key = f"predictions/{path.relative_to(predicted / 'predictions').as_posix()}"
        s3.upload_file(str(path), s3_bucket, key)
    local = predicted / "s3-labels"
    land_labels(local, "2026-12-04", [world[DAYS[0]], world[DAYS[1]]])
    s3.upload_file(
        str(local / "dt=2026-12-04" / "part-0.parquet"), s3_bucket, "labels/dt=2026-12-04/p.parquet"
    )
    hook = StorageHook(aws_conn_id="aws_default")
    outcome = check_partitioned_performance(
        read_champion(client, champion["name"]),
        hook.get_filesystem,
        hook.get_storage(),
        predictions_uri=f"s3://{s3_bucket}/predictions/",
        labels_uri=f"s3://{s3_bucket}/labels/",
        id_columns=["request_id"],
        settings=DecaySettings(),
        mlflow_session=lambda: session_on(client),
        report_uri=f"s3://{s3_bucket}/reports/performance.json",
        mlflow_artifact="monitoring/performance/s3/performance.json",
    )
    summary = outcome.result()
    assert summary["partitions"] == {"total": 3, "scored": 2, "pending": 1}
    assert summary["verdict_partitions"] == [f"dt={DAYS[1]}"]
    assert summary["decayed"] is False and summary["pending"] == [f"dt={DAYS[2]}"]


def test_config_wires_ids_predictions_and_coverage_into_the_dags():
    from airflow_mlops.factories.config import parse_config
    from airflow_mlops.factories.continuous_training import continuous_training_dag
    from airflow_mlops.factories.monitoring import monitoring_dag

    raw = {
        "name": "m",
        "data": {
            "train_uri": "/d/train/",
            "target": "y",
            "inference_uri": "/d/inference/dt={{ ds }}/",
            "predictions_uri": "/d/predictions/",
            "id_columns": ["request_id"],
        },
        "monitoring": {
            "current_uri": "/d/inference/",
            "decay": {"labels_uri": "/d/labels/", "min_label_coverage": 0.9},
        },
    }
    config = parse_config(raw)
    predict = continuous_training_dag(config).get_task("predict")
    assert predict.key_columns == ["request_id"] and predict.output_uri == "/d/predictions/"
    decay = monitoring_dag(config).get_task("decay")
    assert decay.predictions_uri == "/d/predictions/" and decay.id_columns == ["request_id"]
    assert decay.min_label_coverage == 0.9
    assert parse_config({**raw, "monitoring": {}}).monitoring.decay is None
    # A predictions file keeps the single-table decay check.
    raw["data"] = {**raw["data"], "predictions_uri": "/d/predictions.parquet"}
    assert monitoring_dag(parse_config(raw)).get_task("decay").predictions_uri is None


def test_settings_and_operator_refuse_half_configured_delayed_labels():
    from airflow_mlops.core.errors import ConfigError

    for bad in (0, 1.5, True):
        with pytest.raises(ConfigError, match="min_label_coverage"):
            DecaySettings(min_label_coverage=bad)
    with pytest.raises(ConfigError, match="both predictions_uri and id_columns"):
        ModelPerformanceOperator(task_id="d", model_name="m", labels_uri="/l/", id_columns=["i"])
    with pytest.raises(ConfigError, match="both predictions_uri and id_columns"):
        ModelPerformanceOperator(
            task_id="d", model_name="m", labels_uri="/l/", predictions_uri="/p/"
        )
