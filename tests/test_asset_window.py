"""New data trains on the new data (issue #16 item 3), and schedule-templated training URIs.

End to end through Airflow: a producer DAG lands one Hive partition (temporary name, then
rename) and emits the pipeline's new-data Asset with ``extra={"partition": ...}``; Airflow
queues the CT DAG (``AssetDagRunQueue``), the scheduler's own run-creation code makes the
``asset_triggered`` run, and ``dag.test()``'s task loop executes it (helpers of
tests/test_pipelines.py, real MLflow server fixture). A later partition already sits in the
folder, so only a window that *ends with the landed partition* excludes it.

The event carries the partition in ``extra``, not as an Airflow asset partition key
(``outlet_events[asset].add_partitions``, 3.2+): Airflow 3.3 queues only partition-aware
(``PartitionedAssetTimetable``) DAGs for a keyed event, and the CT DAG's schedule (cron or
the retrain and new-data Assets) is not one. A keyed event is read all the same when a
partition-aware DAG gets one (tests/test_changes.py).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import serialize_dag
from test_pipelines import (
    DATA,
    PIPELINES,
    SMALL_FOREST,
    execute_run,
    runs_of,
    scheduler_loops,
    set_paused,
    states_of,
    summary_of,
    xcom,
)

from airflow_mlops.core.errors import TemplateNotAllowedError
from airflow_mlops.factories import continuous_training_dag, parse_config
from airflow_mlops.factories.chain import new_data_asset

# Days already in the landing folder, and the day the producer lands (before the last one:
# a late partition, so "the newest there is" would be the wrong window end).
EARLIER, LANDED, LATER = "2026-12-01", "2026-12-02", "2026-12-03"


def bc_rows(batch: str, part: int, parts: int = 2) -> pd.DataFrame:
    frame = pd.read_parquet(DATA / "breast_cancer" / f"{batch}.parquet")
    return frame.iloc[part::parts].reset_index(drop=True)


def write_partition(root: Path, day: str, frame: pd.DataFrame) -> Path:
    """How a producer should land a partition: write a temporary name, then rename."""
    folder = root / f"dt={day}"
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / "part-0.parquet"
    temporary = folder / "_part-0.parquet.tmp"  # '_' files are skipped by every reader
    frame.to_parquet(temporary, index=False)
    os.replace(temporary, final)
    (folder / "_SUCCESS").touch()
    return final


def ct_config(name: str, landing: Path, **data: Any) -> Any:
    return parse_config(
        {
            "name": name,
            "retries": 0,
            "data": {
                "train_uri": str(landing),
                "new_data_uri": str(landing),
                "target": "benign",
                "exclude": ["dt"],
                "window": {"last_partitions": 2},
                **data,
            },
            "validation": {"enabled": False},
            "training": {
                "estimator": "sklearn.ensemble.RandomForestClassifier",
                "params": SMALL_FOREST,
                "holdout_fraction": 0.3,
            },
            "promotion": {"approval": "auto", "serving_check": False},
            "monitoring": {"enabled": False},
        },
        source=f"<test {name}>",
        base_dir=PIPELINES,
    )


def producer_dag(landing: Path, asset: Any) -> Any:
    """Lands one partition per run and announces it on the new-data Asset."""
    from airflow.sdk import DAG, task

    with DAG(f"land_{uuid.uuid4().hex[:8]}", schedule=None) as dag:

        @task(outlets=[asset])
        def land_partition(*, outlet_events: Any) -> str:
            path = write_partition(landing, LANDED, bc_rows("clean", 0))
            outlet_events[asset].extra = {"partition": f"dt={LANDED}", "uri": str(path)}
            return str(path)

        land_partition()
    return dag


def test_new_data_event_trains_on_the_window_ending_with_the_landed_partition(
    tmp_path, client, mlflow_conn, run_dag
):
    landing = tmp_path / "landing"
    write_partition(landing, EARLIER, bc_rows("reference", 0))
    write_partition(landing, LATER, bc_rows("reference", 1))
    config = ct_config(f"aw_{uuid.uuid4().hex[:8]}", landing)
    asset = new_data_asset(config)
    ct, producer = continuous_training_dag(config), producer_dag(landing, asset)
    serialize_dag(ct)
    set_paused(ct.dag_id, False)  # a paused DAG is not queued on its Assets
    try:
        landed = run_dag(producer)
        assert landed.state == "success", states_of(landed)
        scheduler_loops(ct.dag_id)
        triggered = [r for r in runs_of(ct.dag_id) if r["run_type"] == "asset_triggered"]
        assert len(triggered) == 1 and len(triggered[0]["consumed_event_ids"]) == 1, triggered
    finally:
        set_paused(ct.dag_id, True)

    dag_run = execute_run(ct, triggered[0]["run_id"])
    assert dag_run.state == "success", states_of(dag_run)
    assert summary_of(dag_run)["outcome"] == "promoted", summary_of(dag_run)

    detect = xcom(dag_run, "detect_changes")
    assert detect["reason"] == "first model: no champion yet"
    trigger = detect["trigger"]
    assert trigger["source_dag_id"] == producer.dag_id and trigger["uri"] == asset.uri
    assert trigger["source_run_id"] == landed.run_id
    assert trigger["extra"]["partition"] == f"dt={LANDED}" and trigger["window_end"] == LANDED
    assert xcom(dag_run, "detect_changes", key="window_end") == LANDED

    run = client.get_run(xcom(dag_run, "train")["run_id"])
    tags = run.data.tags
    assert tags["mlops.trigger"] == (
        f"asset-triggered: new data {asset.uri} partition {LANDED} "
        f"from {producer.dag_id}/{landed.run_id}"
    )
    manifest_file = client.download_artifacts(run.info.run_id, "mlops/manifest.json", tmp_path)
    read = [
        entry["partition"]["dt"] for entry in json.loads(Path(manifest_file).read_text())["files"]
    ]
    assert read == [EARLIER, LANDED], "the window ends with the landed partition, not the newest"
    assert tags["mlops.data.files"] == "2"


# -- templated URIs -----------------------------------------------------------------------


def test_ds_in_train_uri_renders_per_run_and_conn_or_var_is_refused(tmp_path):
    from airflow.sdk.definitions.param import ParamsDict

    raw = f"{tmp_path}/daily/dt={{{{ ds }}}}/"
    dag = continuous_training_dag(
        ct_config(
            "tmpl", tmp_path, train_uri=raw, new_data_uri=None, allowed_prefixes=[str(tmp_path)]
        )
    )
    env = dag.get_template_env()

    def rendered(train_uri: str) -> str:
        task = dag.get_task("train")
        context = {"params": ParamsDict({"train_uri": train_uri}), "ds": "2026-12-01"}
        return task.render_template(task.train_uri, context, env)

    assert rendered(raw) == f"{tmp_path}/daily/dt=2026-12-01/"
    assert rendered(f"{tmp_path}/other/") == f"{tmp_path}/other/", "a trigger param still wins"
    assert dag.get_task("detect_changes").train_uri == dag.get_task("train").train_uri

    for secret in ("{{ conn.aws_default.password }}", "{{ var.value.token }}"):
        with pytest.raises(TemplateNotAllowedError, match=r"data\.train_uri"):
            ct_config("tmpl", tmp_path, train_uri=f"{tmp_path}/{secret}/")
