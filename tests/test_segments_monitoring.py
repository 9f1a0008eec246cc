"""Segments are monitored: one drift check per segment model, on its own rows (issue #17, 4).

A segmented pipeline trains ``<model>__<segment>`` champions; its monitoring DAG maps the
drift check over them, each on its segment's rows, each with its own retrain Asset and
debounce. A run whose every check was skipped (no champion at all) fails with a summary
naming what it could not check. DAGs run with ``dag.test()`` against the real MLflow server.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import stored_xcom, task_states

from airflow_mlops.core.errors import ConfigError
from airflow_mlops.factories import continuous_training_dag, monitoring_dag, parse_config

SEGMENTS = ["s", "m", "l"]
FEATURES = ["x1", "x2", "x3", "x4"]
SHIFTED = ["x1", "x2", "x3"]


def segment_rows(seed: int, rows: int = 150) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frames = []
    for offset, band in enumerate(SEGMENTS):
        frame = pd.DataFrame({c: rng.normal(offset, 1.0, rows) for c in FEATURES})
        frame["band"] = band
        frame["y"] = frame[FEATURES].sum(axis=1) + rng.normal(0, 0.1, rows)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def segmented_config(folder: Path, **monitoring: Any) -> Any:
    name = f"segmon_{uuid.uuid4().hex[:8]}"
    raw = {
        "name": name,
        "retries": 0,
        "data": {
            "train_uri": str(folder / "train.parquet"),
            "target": "y",
            "exclude": ["band"],
            "allowed_prefixes": [str(folder)],
        },
        "validation": {"enabled": False},
        "training": {
            "estimator": "sklearn.linear_model.Ridge",
            "params": {"alpha": 1.0},
            "task": "regression",
        },
        "promotion": {"serving_check": False},
        "segments": {"column": "band", "values": SEGMENTS},
        "monitoring": {
            "current_uri": str(folder / "current.parquet"),
            "drift_share": 0.5,
            "debounce_hours": 0,
            **monitoring,
        },
    }
    return parse_config(raw, source=f"<test {name}>")


def retrain_events(model: str) -> list[dict[str, Any]]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    from airflow_mlops.assets import retrain_asset

    with create_session() as session:
        asset = session.query(AssetModel).filter_by(uri=retrain_asset(model).uri).one_or_none()
        if asset is None:
            return []
        return [
            {"extra": dict(e.extra or {}), "source_dag_id": e.source_dag_id}
            for e in session.query(AssetEvent).filter_by(asset_id=asset.id)
        ]


def rendered_map_indexes(dag_run: Any, task_id: str) -> list[str]:
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(TaskInstance).filter_by(
            dag_id=dag_run.dag_id, run_id=dag_run.run_id, task_id=task_id
        )
        return [ti.rendered_map_index for ti in sorted(rows, key=lambda ti: ti.map_index)]


@pytest.fixture
def landing(tmp_path: Path) -> Path:
    train = segment_rows(seed=0)
    train.to_parquet(tmp_path / "train.parquet", index=False)
    # New data: the training rows again, except that segment "s" moved far on three columns.
    current = train.copy()
    in_s = current["band"] == "s"
    current.loc[in_s, SHIFTED] = current.loc[in_s, SHIFTED] + 8.0
    current.to_parquet(tmp_path / "current.parquet", index=False)
    # Labels that landed: the training rows, except that segment "l" is now far off.
    labels = train.copy()
    labels.loc[labels["band"] == "l", "y"] += 50.0
    labels.to_parquet(tmp_path / "labels.parquet", index=False)
    return tmp_path


def test_each_segment_model_is_checked_on_its_own_rows_with_its_own_signal(
    landing, client, mlflow_conn, run_dag
):
    decay = {"labels_uri": str(landing / "labels.parquet"), "tolerance": 0.5}
    config = segmented_config(landing, decay=decay)
    models = [f"{config.name}__{band}" for band in SEGMENTS]
    ct_run = run_dag(continuous_training_dag(config))
    assert ct_run.state == "success", task_states(ct_run)
    for model in models:
        assert client.get_model_version_by_alias(model, "champion").version == "1"

    monitor = monitoring_dag(config)
    dag_run = run_dag(monitor)
    states = task_states(dag_run)
    assert dag_run.state == "success", states
    assert [states[("drift", i)] for i in range(3)] == ["success"] * 3, states
    assert rendered_map_indexes(dag_run, "drift") == SEGMENTS  # the UI names each segment
    drift = [stored_xcom(dag_run, "drift", map_index=i) for i in range(3)]
    assert [d["model_name"] for d in drift] == models
    assert drift[0]["dataset"]["drifted"] is True, drift[0]
    assert set(SHIFTED) <= set(drift[0]["drifted_columns"]), drift[0]
    assert drift[0]["retrain_signal"]["emit"] is True, drift[0]["retrain_signal"]
    for other in drift[1:]:
        assert other["dataset"]["drifted"] is False, other
        assert other["drifted_columns"] == [], other
        assert other["retrain_signal"]["emit"] is False, other["retrain_signal"]

    # Decay: each segment model scored on its own labelled rows; only "l" decayed.
    assert [states[("decay", i)] for i in range(3)] == ["success"] * 3, states
    decay = [stored_xcom(dag_run, "decay", map_index=i) for i in range(3)]
    assert [d["model_name"] for d in decay] == models
    assert [d["decayed"] for d in decay] == [False, False, True], decay
    assert [d["labelled_rows"] for d in decay] == [150, 150, 150], decay
    assert decay[2]["retrain_signal"]["emit"] is True, decay[2]["retrain_signal"]

    events = retrain_events(models[0])
    assert len(events) == 1 and events[0]["source_dag_id"] == monitor.dag_id, events
    assert events[0]["extra"]["model_name"] == models[0]
    assert events[0]["extra"]["segment"] == "s"
    assert events[0]["extra"]["trigger"] == "drift"
    assert retrain_events(models[1]) == []
    assert [e["extra"]["trigger"] for e in retrain_events(models[2])] == ["performance_decay"]

    summary = stored_xcom(dag_run, "summary")
    assert [e["model_name"] for e in summary["checked"]] == models * 2, summary
    assert summary["not_checked"] == [] and summary["failed"] == [], summary
    assert summary["retrain_signals"] == [models[0], models[2]]


def test_a_run_without_any_champion_fails_naming_what_it_could_not_check(
    landing, mlflow_conn, run_dag
):
    config = segmented_config(landing)
    dag_run = run_dag(monitoring_dag(config))
    states = task_states(dag_run)
    assert dag_run.state == "failed", states
    assert [states[("drift", i)] for i in range(3)] == ["skipped"] * 3, states
    assert states[("summary", -1)] == "failed", states
    summary = stored_xcom(dag_run, "summary")
    assert summary["checked"] == [], summary
    assert [e["model_name"] for e in summary["not_checked"]] == [
        f"{config.name}__{band}" for band in SEGMENTS
    ]
    assert all("no champion" in e["reason"] for e in summary["not_checked"]), summary


def test_the_segment_ct_dag_listens_to_every_segment_signal(tmp_path):
    from airflow_mlops.assets import retrain_asset

    config = segmented_config(tmp_path)
    condition = continuous_training_dag(config).timetable.asset_condition
    uris, pending = set(), [condition]
    while pending:  # an AssetAny of AssetAny ... of Assets
        node = pending.pop()
        pending.extend(getattr(node, "objects", []))
        if getattr(node, "uri", None):
            uris.add(node.uri)
    for band in SEGMENTS:
        assert retrain_asset(f"{config.name}__{band}").uri in uris, uris


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"columns": ["x1", "band"]}, "monitoring.columns"),
    ],
)
def test_a_segmented_config_that_cannot_be_monitored_is_refused_at_build(tmp_path, change, field):
    config = segmented_config(tmp_path, **change)
    with pytest.raises(ConfigError, match=re.escape(field)):
        monitoring_dag(config)


def test_segment_values_that_collide_as_model_names_are_refused(tmp_path):
    config = segmented_config(tmp_path)
    raw = config.model_dump(mode="json")
    raw["segments"]["values"] = ["a b", "a_b"]
    with pytest.raises(ConfigError, match=r"segments\.values"):
        monitoring_dag(parse_config(raw))
