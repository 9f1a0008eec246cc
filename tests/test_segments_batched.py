"""Batched segments: a task trains, gates and promotes a chunk of segment models (#17, item 5).

One segmented CT DAG (5 segments, ``batch_size: 3`` → 2 chunk tasks, two segments at once per
task, a validation suite, serving check on) runs with ``dag.test()`` against the real MLflow
server fixture: four segments are promoted, a planted bad segment (every target value
missing) fails only itself, is named in the run summary and leaves its chunk task and the
run failed. A retry of a chunk is emulated by
running the same chunk again with the task instance's own identity (same dag/run/task/map
index, so the same per-segment idempotency keys) through the core function the operator
calls: it must create no run, no version and no alias move. The XCom payload builders are
unit-tested at 1,000 segments.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import stored_xcom, task_states

from airflow_mlops.core.errors import ConfigError
from airflow_mlops.core.segments import (
    MAX_MAPPED,
    MAX_XCOM_NAMES,
    batch_summary,
    chunk_count,
    chunk_of,
    chunk_xcom,
    default_batch_size,
    read_manifest,
    write_manifest,
)
from airflow_mlops.core.storage import Storage
from airflow_mlops.factories import continuous_training_dag, parse_config

GOOD = ["a", "b", "c", "d"]
BAD = "bad"
SEGMENTS = ["a", "b", BAD, "c", "d"]  # chunk 0: a, b, bad; chunk 1: c, d
FEATURES = ["x1", "x2", "x3"]
XCOM_LIMIT = 64 * 1024


def segment_data(path: Path, rows: int = 120) -> Path:
    rng = np.random.default_rng(3)
    frames = []
    for index, segment in enumerate(SEGMENTS):
        frame = pd.DataFrame({c: rng.normal(index, 1.0, rows) for c in FEATURES})
        frame["seg"] = segment
        frame["y"] = frame[FEATURES].sum(axis=1) + rng.normal(0, 0.1, rows)
        if segment == BAD:
            frame["y"] = np.nan  # bad rows: no label at all, training refuses them
        frames.append(frame)
    pd.concat(frames, ignore_index=True).to_parquet(path)
    return path


def batched_config(folder: Path, **segments: Any) -> Any:
    name = f"segb_{uuid.uuid4().hex[:8]}"
    raw = {
        "name": name,
        "retries": 0,
        "data": {
            "train_uri": str(folder / "train.parquet"),
            "target": "y",
            "exclude": ["seg"],
            "allowed_prefixes": [str(folder)],
        },
        # Every segment is validated on its own rows (the bad one passes: its labels are
        # missing, not its features) and fails at training.
        "validation": {
            "suite": [{"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "x1"}}]
        },
        "training": {"estimator": "sklearn.linear_model.Ridge", "task": "regression"},
        "promotion": {"serving_check": True},
        "segments": {
            "column": "seg",
            "values": SEGMENTS,
            "batch_size": 3,
            "workers": 2,  # two segments of a chunk at once
            **segments,
        },
        "monitoring": {"enabled": False},
    }
    return parse_config(raw, source=f"<test {name}>", base_dir=folder)


@pytest.fixture(scope="module")
def batched_run(tmp_path_factory, mlflow_server):
    """One run of the batched DAG (module-scoped: the tests below read it)."""
    from conftest import mlflow_connection_env, serialize_dag

    folder = tmp_path_factory.mktemp("segb")
    segment_data(folder / "train.parquet")
    config = batched_config(folder)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", mlflow_connection_env(mlflow_server))
        dag = continuous_training_dag(config)
        serialize_dag(dag)
        dag_run = dag.test()
    return config, dag, dag_run


def champion(client: Any, model: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(model, "champion").version)
    except MlflowException:
        return None


def test_chunks_promote_each_segment_and_a_bad_segment_fails_only_itself(batched_run, client):
    config, _, dag_run = batched_run
    states = task_states(dag_run)
    assert states[("split_segments", -1)] == "success", states
    assert states[("segment_batch", 0)] == "failed", states  # holds the bad segment
    assert states[("segment_batch", 1)] == "success", states
    assert states[("summary", -1)] == "failed", states
    assert dag_run.state == "failed"
    assert not [t for (t, _) in states if t.startswith("segment.")]  # no per-segment chain

    model = config.registered_model_name
    for segment in GOOD:
        assert champion(client, f"{model}__{segment}") == "1", segment
    assert champion(client, f"{model}__{BAD}") is None

    summary = stored_xcom(dag_run, "summary")
    assert summary["failed_segments"] == [BAD], summary
    assert summary["outcomes"] == {"promoted": 4, "failed": 1}, summary
    assert "failed segments: bad" not in summary["reason"]  # the reason counts, the list names
    chunk0 = stored_xcom(dag_run, "segment_batch", map_index=0)
    assert chunk0["failed_segments"] == [BAD] and chunk0["outcomes"]["promoted"] == 2, chunk0

    records = {r["segment"]: r for r in json.loads(Path(chunk0["results_uri"]).read_text())}
    bad = records[BAD]
    assert bad["failed"] and bad["steps"]["train"] == "failed", bad
    assert bad["steps"]["promote"] == "upstream_failed", bad
    assert "train" in bad["reason"] and bad["errors"]["train"], bad
    for segment in ("a", "b"):
        record = records[segment]
        assert record["outcome"] == "promoted" and record["steps"]["promote"] == "success"
        assert record["steps"]["validate"] == "success", record
    assert bad["steps"]["validate"] == "success", bad  # validated, then refused by training
    # The serving check ran for every promoted segment (recorded on the challenger's run).
    run = client.get_run(records["a"]["run_id"])
    assert run.data.tags["mlops.promotion.outcome"] == "promoted"
    # Each segment has its own idempotency key (its own run), tagged with its own task id.
    keys = {client.get_run(records[s]["run_id"]).data.tags["mlops.idempotency_key"] for s in "ab"}
    assert len(keys) == 2


def test_a_retried_chunk_creates_no_run_version_or_alias_move(batched_run, client):
    """Emulates retries of chunk 1 with its task instance's identity, through the core call
    the operator makes (a real retry through Airflow would cost dag.test() the 30 s retry
    delay): with the earlier try's results file (the operator reads it), and without it (a
    try killed before writing): neither creates a run, a version or an alias move."""
    from airflow_mlops.core import segment_batch as sb
    from airflow_mlops.core.alias_history import alias_history
    from airflow_mlops.core.lineage import RunContext
    from airflow_mlops.core.promotion import PromotionOptions, ServingCheckOptions
    from airflow_mlops.core.provenance import ModelTrust
    from airflow_mlops.core.training import local_filesystem
    from airflow_mlops.core.training_job import TrainingJob

    config, dag, dag_run = batched_run
    storage = Storage()
    manifest = stored_xcom(dag_run, "split_segments", key="manifest_uri")
    specs, size = read_manifest(storage, manifest)
    mine = chunk_of(specs, 1, size)
    assert [s.segment for s in mine] == ["c", "d"]
    experiment = client.get_experiment_by_name(config.experiment_name).experiment_id
    runs_before = len(client.search_runs([experiment], max_results=1000))
    history_before = {s.model_name: alias_history(client, s.model_name) for s in mine}
    earlier = json.loads(
        Path(stored_xcom(dag_run, "segment_batch", map_index=1)["results_uri"]).read_text()
    )
    job = TrainingJob.from_values(
        {
            **config.training.model_dump(exclude={"experiment_name"}),
            "train_uri": "segment",
            "target": "y",
            "exclude": ["seg"],
            "experiment_name": config.experiment_name,
            "extra_tags": {"mlops.pipeline.config_hash": config.fingerprint()},
        }
    )
    settings = sb.BatchSettings(
        job=job,
        trust=ModelTrust,
        promotion=PromotionOptions(serving=ServingCheckOptions()),
        experiment_id=experiment,
    )
    context = RunContext(dag.dag_id, dag_run.run_id, "segment_batch", 2, 1)

    kept = sb.run_segment_batch(
        mine, settings, context, client, storage, local_filesystem, earlier=earlier
    )
    assert all(r["earlier_try"] and r["outcome"] == "promoted" for r in kept), kept
    rerun = sb.run_segment_batch(mine, settings, context, client, storage, local_filesystem)
    assert [r["failed"] for r in rerun] == [False, False], rerun
    assert all(r["reused"] for r in rerun), rerun  # each segment's finished run came back

    assert len(client.search_runs([experiment], max_results=1000)) == runs_before
    for spec in mine:
        versions = client.search_model_versions(f"name = '{spec.model_name}'")
        assert [v.version for v in versions] == ["1"], spec
        assert champion(client, spec.model_name) == "1"
        assert alias_history(client, spec.model_name) == history_before[spec.model_name]


def test_a_segment_moves_both_aliases_in_one_lock_cycle_and_a_failed_move_leaves_no_lock(
    batched_run, client, monkeypatch
):
    """A segment takes its promotion lock once for ``@challenger`` and ``@champion`` (register
    takes it, promote releases it) and evaluates against the champion detect_changes read;
    a move that fails in either step releases the lock and fails only that step."""
    import dataclasses

    from airflow_mlops.core import alias_moves
    from airflow_mlops.core import evaluation as ev
    from airflow_mlops.core import segment_batch as sb
    from airflow_mlops.core.lineage import RunContext
    from airflow_mlops.core.promotion import PromotionOptions
    from airflow_mlops.core.promotion_lock import LOCK_SUFFIX, PromotionLock
    from airflow_mlops.core.provenance import ModelTrust
    from airflow_mlops.core.training import local_filesystem
    from airflow_mlops.core.training_job import TrainingJob

    config, dag, dag_run = batched_run
    storage = Storage()
    specs, _ = read_manifest(storage, stored_xcom(dag_run, "split_segments", key="manifest_uri"))
    spec = next(s for s in specs if s.segment == "a")
    experiment = client.get_experiment_by_name(config.experiment_name).experiment_id
    job = TrainingJob.from_values(
        {
            **config.training.model_dump(exclude={"experiment_name"}),
            "train_uri": "segment",
            "target": "y",
            "exclude": ["seg"],
            "experiment_name": config.experiment_name,
        }
    )
    settings = sb.BatchSettings(
        job=job, trust=ModelTrust, promotion=PromotionOptions(), experiment_id=experiment
    )
    locks_taken: list[str] = []
    create = client.create_registered_model

    def counted_create(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.endswith(LOCK_SUFFIX):
            locks_taken.append(name)
        return create(name, *args, **kwargs)

    def refused_evaluation_read(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("evaluate read the champion again")

    real_set_alias = alias_moves.set_alias_checked
    failing_alias: list[str] = []

    def set_alias(client_: Any, model: str, alias: str, version: str) -> None:
        if alias in failing_alias:
            raise RuntimeError(f"planted failure moving @{alias}")
        real_set_alias(client_, model, alias, version)

    monkeypatch.setattr(client, "create_registered_model", counted_create)
    monkeypatch.setattr(ev, "resolve_champion", refused_evaluation_read)
    monkeypatch.setattr(alias_moves, "set_alias_checked", set_alias)

    def run(suffix: str) -> tuple[dict, str]:
        mine = dataclasses.replace(spec, model_name=f"{spec.model_name}_{suffix}")
        context = RunContext(dag.dag_id, f"lock-{suffix}", "segment_batch", 1, 0)
        [record] = sb.run_segment_batch(
            [mine], settings, context, client, storage, local_filesystem
        )
        return record, mine.model_name

    record, model = run("ok")
    assert record["outcome"] == "promoted", record
    assert locks_taken == [f"{model}{LOCK_SUFFIX}"]
    assert client.get_registered_model(model).aliases == {"challenger": "1", "champion": "1"}
    assert PromotionLock(client, model).read() is None

    for alias, failed_step in (("champion", "promote"), ("challenger", "register")):
        failing_alias[:] = [alias]
        record, model = run(f"fail_{alias}")
        assert record["failed"] and record["steps"][failed_step] == "failed", record
        assert f"planted failure moving @{alias}" in record["errors"][failed_step]
        assert PromotionLock(client, model).read() is None, f"{failed_step} left its lock"
        assert champion(client, model) is None


def test_payloads_stay_small_at_1000_segments(tmp_path):
    storage = Storage()
    specs = [
        {
            "segment": f"segment_{i:04d}",
            "model_name": f"a_fairly_long_pipeline_model_name__segment_{i:04d}",
            "train_uri": f"{tmp_path}/run/split_segments/segments/segment_{i:04d}/train.parquet",
            "rows": 200,
            "sha256": "f" * 64,
        }
        for i in range(1000)
    ]
    split = write_manifest(storage, str(tmp_path / "manifest.json"), specs, 25)
    assert split["chunks"] == list(range(40))
    assert len(json.dumps(split)) < 1024  # was ~220 B per segment (220 KB at 1,000)
    assert [s.segment for s in chunk_of(read_manifest(storage, split["manifest_uri"])[0], 39, 25)]
    records = [
        {
            "segment": s["segment"],
            "model_name": s["model_name"],
            "outcome": "failed",
            "reason": "task train failed: " + "x" * 400,
            "failed": True,
            "seconds": {"total": 1.0},
        }
        for s in specs
    ]  # the worst case: every segment failed, all in one chunk
    assert len(json.dumps(chunk_xcom(0, records, "s3://b/results.json"))) < XCOM_LIMIT
    summary = batch_summary(records, 1000, list(range(1000)))
    assert summary["failed"] == 1000 and len(summary["failed_segments"]) == MAX_XCOM_NAMES
    assert len(json.dumps(summary)) < XCOM_LIMIT


@pytest.mark.parametrize(
    ("segments", "size", "chunks"),
    [
        (101, 25, 5),
        (500, 25, 20),
        (600, 30, 20),
        (1000, 50, 20),
        (5000, 50, 100),
        (60000, 59, 1017),
    ],
)
def test_the_default_chunk_grows_to_50_while_20_chunks_remain_and_never_exceeds_the_map_limit(
    segments, size, chunks
):
    assert default_batch_size(segments) == size
    assert chunk_count(segments, size) == chunks <= MAX_MAPPED


def test_batched_mode_is_the_default_above_100_segments_and_refuses_what_it_cannot_do(tmp_path):
    values = [f"s{i}" for i in range(1000)]
    many = batched_config(tmp_path, values=values, batch_size=None)
    assert many.segments.effective_batch_size == 50  # 20 chunks: fewer task start-ups
    few = batched_config(tmp_path, batch_size=None)
    assert few.segments.effective_batch_size is None  # today's per-segment chain
    with pytest.raises(ConfigError, match="batch_size"):
        batched_config(tmp_path, values=[f"s{i}" for i in range(1025)], batch_size=1)
    raw = batched_config(tmp_path).model_dump(mode="json", exclude_none=True)
    for approval in ("manual", "auto_if_confident"):  # nobody could answer per segment
        with pytest.raises(ConfigError, match=f"approval: {approval}"):
            parse_config(
                {**raw, "promotion": {"approval": approval}}, source="<t>", base_dir=tmp_path
            )
    dag = continuous_training_dag(many)
    assert {"split_segments", "segment_batch", "summary"} <= set(dag.task_ids)
