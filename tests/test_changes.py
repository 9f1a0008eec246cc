"""Change detection by manifest (issue #16 item 2) and the new-data trigger record (item 3).

The operator runs in real DAG runs (``dag.test()``, a ``scheduled`` run made as the scheduler
makes it) against the real MLflow server fixture, on Hive-partitioned local folders. A
champion is a registered model version whose training run carries the #16 data contract
(``mlops/manifest.json`` and the ``mlops.data.*`` tags), built with MLflow's own client.

"Reads no data file" is checked two ways: the task's filesystem counts files opened and
bytes read through it (``StorageHook.get_filesystem`` is the one thing patched, to hand out
that counting subclass of fsspec's local filesystem), and a Python audit hook counts every
``open()`` of a path under the data folder, whatever code opens it.
"""

from __future__ import annotations

import datetime as dt
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from test_datasets import DAYS, ReadCountingFS, land_days
from test_pipelines import create_scheduled_run, execute_run, states_of, xcom

from airflow_mlops.core.changes import (
    decide_retrain,
    new_data_trigger,
    partition_end,
)
from airflow_mlops.core.datasets import resolve_files
from airflow_mlops.core.lineage import (
    MANIFEST_ARTIFACT_PATH,
    TAG_DATA_SHA256,
    TAG_PIPELINE_CONFIG_HASH,
)
from airflow_mlops.core.manifest import build_manifest

CONFIG_HASH = "config-1"

# Paths under WATCHED[0] opened by any Python code of this process (see the docstring).
WATCHED: list[str] = []
OPENED: list[str] = []
HOOKED: list[Any] = []


def _count_opens(event: str, args: tuple[Any, ...]) -> None:
    path = args[0] if event == "open" and WATCHED else None
    if isinstance(path, str | Path) and str(path).startswith(WATCHED[0]):
        OPENED.append(str(path))


# -- core ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("landed", "end"),
    [
        ("dt=2026-12-01", "2026-12-01"),
        ("2026-12-01", "2026-12-01"),
        ("region=eu/dt=2026-12-01", "2026-12-01"),
        ("s3://b/sales/dt=2026-12-01/part-0.parquet", "2026-12-01"),
        ("/data/sales/sales_2026-12-01.parquet", "2026-12-01"),
        ("batch=17", "17"),
        ("/data/sales/latest.parquet", None),
    ],
)
def test_partition_end_reads_partitions_and_landed_paths(landed, end):
    assert partition_end(landed) == end


def test_new_data_trigger_records_the_newest_event_of_the_new_data_asset():
    uri = "file:///data/sales"
    events = [
        {"uri": "mlops-retrain://m", "extra": {"partition": "dt=2020-01-01"}},
        {
            "uri": uri,
            "extra": {"partition": "dt=2026-11-30"},
            "source_dag_id": "land",
            "source_run_id": "r1",
            "timestamp": "2026-11-30T01:00:00+00:00",
        },
        {
            "uri": uri,
            "extra": {"partition": "dt=2026-12-01", "rows": 4},
            "source_dag_id": "land",
            "source_run_id": "r2",
            "source_task_id": "land_partition",
            "timestamp": "2026-12-01T01:00:00+00:00",
        },
    ]
    record = new_data_trigger(events, uri)
    assert record == {
        "uri": uri,
        "source_dag_id": "land",
        "source_run_id": "r2",
        "source_task_id": "land_partition",
        "timestamp": "2026-12-01T01:00:00+00:00",
        "partition_key": None,
        "extra": {"partition": "dt=2026-12-01", "rows": 4},
        "events": 2,
        "window_end": "2026-12-01",
    }
    # An Airflow asset partition (3.2+) wins over the extra.
    keyed = new_data_trigger([{**events[2], "partition_key": "2026-12-02"}], uri)
    assert keyed["window_end"] == "2026-12-02"
    assert new_data_trigger(events[:1], uri) is None  # the retrain asset is not new data
    assert new_data_trigger(events, None) is None


def test_unchanged_data_skips_only_a_scheduled_run():
    tags = {TAG_PIPELINE_CONFIG_HASH: CONFIG_HASH}

    def decide(run_type: str, data_changed: bool) -> Any:
        return decide_retrain(
            run_type=run_type,
            config_hash=CONFIG_HASH,
            champion_tags=tags,
            data_changed=data_changed,
        )

    assert decide("scheduled", False).train is False
    assert decide("scheduled", True).reason == (
        "training data changed since the champion was trained"
    )
    assert decide("asset_triggered", False).reason == "asset-triggered run"


# -- the operator in scheduled runs -------------------------------------------------------


def changes_dag(train_uri: Path | str, model: str, window: Any = None) -> Any:
    """detect_changes >> train (a stand-in that only shows whether the run went on)."""
    from airflow.sdk import DAG, task

    from airflow_mlops.operators.changes import DetectChangesOperator

    with DAG(f"changes_{uuid.uuid4().hex[:10]}", schedule="@daily") as dag:
        detect = DetectChangesOperator(
            task_id="detect_changes",
            train_uri=str(train_uri),
            model_name=model,
            config_hash=CONFIG_HASH,
            window=window,
            retries=0,
        )

        @task
        def train() -> str:
            return "trained"

        detect >> train()
    return dag


def make_champion(client: Any, files: list, *, with_manifest: bool = True) -> str:
    """A registered model whose @champion came from a run that read local ``files``."""
    fs = ReadCountingFS(skip_instance_cache=True)
    return make_champion_on(client, fs, files, with_manifest=with_manifest)


def make_champion_on(client: Any, fs: Any, files: list, *, with_manifest: bool = True) -> str:
    """A registered model whose @champion came from a run that read ``files`` through ``fs``."""
    name = f"changes-{uuid.uuid4().hex[:8]}"
    manifest = build_manifest(fs, files)
    run = client.create_run(
        client.create_experiment(name),
        tags={TAG_PIPELINE_CONFIG_HASH: CONFIG_HASH, TAG_DATA_SHA256: manifest.content_hash},
    )
    if with_manifest:
        client.log_text(run.info.run_id, manifest.to_json(), MANIFEST_ARTIFACT_PATH)
    client.set_terminated(run.info.run_id)
    client.create_registered_model(name)
    version = client.create_model_version(
        name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
    )
    client.set_registered_model_alias(name, "champion", version.version)
    return name


@pytest.fixture
def counting_fs(monkeypatch: pytest.MonkeyPatch) -> ReadCountingFS:
    """The filesystem the task gets from ``StorageHook.get_filesystem``, counting reads."""
    from airflow_mlops.hooks.storage import StorageHook

    fs = ReadCountingFS(skip_instance_cache=True)
    monkeypatch.setattr(StorageHook, "get_filesystem", lambda self, uri, conn_id=None: fs)
    return fs


@pytest.fixture
def watched(tmp_path: Path):
    if _count_opens not in HOOKED:
        # Audit hooks cannot be removed: added once, inert unless WATCHED names a folder.
        sys.addaudithook(_count_opens)
        HOOKED.append(_count_opens)
    WATCHED[:] = [str(tmp_path / "sales")]
    OPENED.clear()
    yield OPENED
    WATCHED.clear()


def scheduled_run(dag: Any, day: int) -> Any:
    run_id = create_scheduled_run(dag, dt.datetime(2026, 12, day, tzinfo=dt.timezone.utc))
    return execute_run(dag, run_id)


def test_no_new_partition_skips_without_reading_a_data_file(
    tmp_path, client, mlflow_conn, counting_fs, watched
):
    sales = land_days(tmp_path / "sales")
    window = {"last_partitions": 3}
    files = resolve_files(counting_fs, str(sales))[-3:]
    model = make_champion(client, files)
    dag = changes_dag(sales, model, window)
    counting_fs.opens = counting_fs.bytes_read = 0
    OPENED.clear()

    unchanged = scheduled_run(dag, 1)
    assert states_of(unchanged) == {"detect_changes": "skipped", "train": "skipped"}
    result = xcom(unchanged, "detect_changes")
    assert result["train"] is False
    assert result["reason"] == "no change: same data and config as the champion"
    assert result["data"]["basis"] == "manifest" and result["data"]["unchanged"] == 3
    assert (counting_fs.opens, counting_fs.bytes_read, OPENED) == (0, 0, [])

    # A new partition lands: the window moves by one, the run trains and says what moved.
    land_days(sales, ["2026-12-02"])
    OPENED.clear()
    changed = scheduled_run(dag, 2)
    assert states_of(changed) == {"detect_changes": "success", "train": "success"}
    result = xcom(changed, "detect_changes")
    assert result["reason"] == "training data changed since the champion was trained"
    data = result["data"]
    assert (data["new"], data["removed"], data["changed_files"]) == (1, 1, 0), data
    assert data["paths"] == {
        "new": [str(sales / "dt=2026-12-02" / "part-0.parquet")],
        "removed": [str(sales / f"dt={DAYS[1]}" / "part-0.parquet")],
    }
    assert (counting_fs.opens, OPENED) == (0, []), "a listing decides; nothing is hashed"


def test_a_champion_without_manifest_is_compared_by_content_hash(
    tmp_path, client, mlflow_conn, counting_fs, watched
):
    sales = land_days(tmp_path / "sales")
    model = make_champion(client, resolve_files(counting_fs, str(sales)), with_manifest=False)
    dag = changes_dag(sales, model)
    counting_fs.opens = 0
    OPENED.clear()

    same = scheduled_run(dag, 1)
    assert states_of(same)["detect_changes"] == "skipped"
    assert xcom(same, "detect_changes")["data"]["basis"] == "content hash"
    assert counting_fs.opens == len(DAYS), "without a manifest the files are hashed"
    assert len(OPENED) == len(DAYS), "the audit hook sees the task's reads"

    changed_day = sales / f"dt={DAYS[0]}" / "part-0.parquet"
    changed_day.write_bytes(changed_day.read_bytes() + b"\0")  # same path, new bytes
    changed = scheduled_run(dag, 2)
    assert states_of(changed)["train"] == "success"
    assert xcom(changed, "detect_changes")["reason"] == (
        "training data changed since the champion was trained"
    )


def test_an_s3_prefix_with_nothing_new_skips_without_a_get(
    tmp_path, client, mlflow_conn, s3_server, s3_bucket, monkeypatch
):
    """The same on moto S3, through the hook's own filesystem (pyarrow S3 without s3fs),
    wrapped to count the files opened."""
    import boto3
    from test_datasets import CountingArrowFS

    from airflow_mlops.hooks.storage import StorageHook

    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    local = land_days(tmp_path / "landing")
    for path in sorted(local.rglob("*.parquet")):
        s3.upload_file(str(path), s3_bucket, f"sales/{path.relative_to(local)}")
    uri = f"s3://{s3_bucket}/sales"
    hook_filesystem = StorageHook.get_filesystem
    monkeypatch.setattr(
        StorageHook,
        "get_filesystem",
        lambda self, u, conn_id=None: CountingArrowFS(hook_filesystem(self, u, conn_id).fs),
    )
    fs = StorageHook().get_filesystem(uri)
    model = make_champion_on(client, fs, resolve_files(fs, uri))
    CountingArrowFS.opens = 0

    unchanged = scheduled_run(changes_dag(uri, model), 1)
    assert states_of(unchanged)["detect_changes"] == "skipped"
    assert xcom(unchanged, "detect_changes")["data"]["unchanged"] == len(DAYS)
    assert CountingArrowFS.opens == 0


def test_a_byte_identical_copy_elsewhere_is_no_change_and_other_bytes_are(
    tmp_path, client, mlflow_conn, counting_fs, watched
):
    """The champion trained on a copy of the data under another prefix (as when a run's
    ``train_uri`` was overridden with an uploaded copy): no path is shared, so the window is
    hashed, and the same bytes are no change; different bytes of the same size are one."""
    import shutil

    sales = land_days(tmp_path / "sales")
    model = make_champion(client, resolve_files(counting_fs, str(sales)))
    copy = tmp_path / "copy"
    shutil.copytree(sales, copy)
    counting_fs.opens = 0

    same = scheduled_run(changes_dag(copy, model), 1)
    assert states_of(same)["detect_changes"] == "skipped"
    data = xcom(same, "detect_changes")["data"]
    assert data["basis"] == "manifest (same bytes, other paths)", data
    assert counting_fs.opens == len(DAYS), "only the moved files are hashed"

    day = copy / f"dt={DAYS[0]}" / "part-0.parquet"
    raw = bytearray(day.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, other bytes
    day.write_bytes(bytes(raw))
    changed = scheduled_run(changes_dag(copy, model), 2)
    assert states_of(changed)["train"] == "success"
    assert xcom(changed, "detect_changes")["data"]["basis"] == "manifest"
