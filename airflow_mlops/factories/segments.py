"""One model per segment: split the data, then run the CT chain per segment.

Up to 100 segments (``segments.batch_size`` unset), each segment is a map index of one
TaskGroup, so a failing segment fails only its own chain; the others validate, train,
evaluate and promote their own ``<model>__<segment>`` champion.

Batched (``segments.batch_size`` set, or more than 100 segments): ``split_segments`` writes
one manifest of segment specs; ``segment_batch`` is mapped over chunk indexes and runs the
whole chain for each segment of its chunk (:mod:`airflow_mlops.core.segment_batch`), a failing
segment failing only itself; ``summary`` lists every failed segment by name and fails the
run if any failed. XComs carry URIs and counts, never one entry per segment.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import task, task_group

from airflow_mlops.factories.chain import (
    _notify_ct_run,
    single_model_chain,
    summary_task,
    train_uri_field,
)
from airflow_mlops.factories.config import PipelineConfig
from airflow_mlops.operators.base import DAG_ARTIFACTS_PREFIX

__all__ = ["segmented_ct_tasks"]


def segmented_ct_tasks(config: PipelineConfig, prefix: str) -> None:
    assert config.segments is not None
    if config.segments.effective_batch_size is not None:
        _batched_ct_tasks(config, prefix, config.segments.effective_batch_size)
        return
    segments = config.segments
    conns = config.connections.model_dump()
    model = config.registered_model_name

    @task(task_id="split_segments")
    def split(train_uri: str, **context: Any) -> list[dict[str, Any]]:
        from airflow_mlops.core.segments import split_segments
        from airflow_mlops.hooks.storage import StorageHook
        from airflow_mlops.operators.base import MlopsBaseOperator, check_data_uri

        check_data_uri(train_uri, config.allowed_data_prefixes, "params.train_uri")
        storage = StorageHook(aws_conn_id=conns["aws_conn_id"]).get_storage()
        prefix_uri = MlopsBaseOperator.default_report_uri_for(context, "segments")
        parts = split_segments(
            storage,
            train_uri,
            segments.column,
            list(segments.values),
            prefix_uri,
            model,
        )
        # expand_kwargs maps each dict onto the group's parameters.
        return [{"segment_model": p["model_name"], "segment_uri": p["train_uri"]} for p in parts]

    @task_group(group_id="segment")
    def per_segment(segment_model: Any, segment_uri: Any) -> None:
        # Segment files are written by split_segments under this DAG's artifacts folder.
        prefixes = [*config.allowed_data_prefixes, DAG_ARTIFACTS_PREFIX]
        last = single_model_chain(config, segment_model, segment_uri, conns, prefixes)
        last >> summary_task(config, prefix=f"{prefix}segment.", model=segment_model)

    # A task's arguments are rendered: a templated data.train_uri gets the run's dates.
    per_segment.expand_kwargs(split(train_uri_field(config)))


def _batched_ct_tasks(config: PipelineConfig, prefix: str, batch_size: int) -> None:
    from airflow_mlops.core.lineage import TAG_PIPELINE, TAG_PIPELINE_CONFIG_HASH
    from airflow_mlops.factories.chain import new_data_asset
    from airflow_mlops.operators.segments import SegmentBatchOperator

    assert config.segments is not None
    segments = config.segments
    conns = config.connections.model_dump()
    model = config.registered_model_name

    @task(task_id="split_segments")
    def split(train_uri: str, **context: Any) -> list[int]:
        from airflow_mlops.core.segments import split_segments, write_manifest
        from airflow_mlops.core.storage import join_uri
        from airflow_mlops.hooks.storage import StorageHook
        from airflow_mlops.operators.base import MlopsBaseOperator, check_data_uri

        check_data_uri(train_uri, config.allowed_data_prefixes, "params.train_uri")
        storage = StorageHook(aws_conn_id=conns["aws_conn_id"]).get_storage()
        prefix_uri = MlopsBaseOperator.default_report_uri_for(context, "segments")
        parts = split_segments(
            storage, train_uri, segments.column, list(segments.values), prefix_uri, model
        )
        written = write_manifest(storage, join_uri(prefix_uri, "manifest.json"), parts, batch_size)
        ti = context["ti"]
        ti.xcom_push(key="manifest_uri", value=written["manifest_uri"])
        ti.xcom_push(key="segments", value=written["segments"])
        # Airflow maps only over a return value: the chunk indexes (a few bytes each).
        return written["chunks"]

    fingerprint = config.fingerprint()
    asset = new_data_asset(config)
    validation = config.validation
    policy = config.promotion_policy
    chunks = split(train_uri_field(config))
    batch = SegmentBatchOperator.partial(
        task_id="segment_batch",
        manifest_uri=(
            f"{{{{ ti.xcom_pull(task_ids='{prefix}split_segments', key='manifest_uri') }}}}"
        ),
        target=config.data.target,
        experiment_name=config.experiment_name,
        training=config.training,
        key=config.data.key,
        features=config.data.features,
        exclude=config.data.exclude or None,
        window=config.data.window,
        policy=policy.model_dump(mode="json", exclude_none=True) if policy else None,
        slices=config.evaluation.slices or None,
        evaluation_on=config.evaluation.on,
        min_rows=config.evaluation.min_rows,
        suite=validation.suite if validation.enabled and validation.suite else None,
        on_failure=validation.on_failure,
        config_hash=fingerprint,
        new_data_asset_uri=asset.uri if asset is not None else None,
        serving_check=config.promotion.serving_check,
        workers=segments.workers,
        extra_tags={TAG_PIPELINE_CONFIG_HASH: fingerprint, TAG_PIPELINE: config.name},
        # Segment files are written by split_segments under this DAG's artifacts folder.
        allowed_data_prefixes=[*config.allowed_data_prefixes, DAG_ARTIFACTS_PREFIX],
        **conns,
    ).expand(chunk=chunks)
    batch >> _batch_summary_task(config, prefix, batch_size)


def _batch_summary_task(config: PipelineConfig, prefix: str, batch_size: int) -> Any:
    """Every segment's outcome from the chunks' results files; fails the run, naming the
    failed segments, when any segment failed or a chunk left no results."""
    assert config.segments is not None
    expected = len(config.segments.values)
    aws_conn_id = config.connections.aws_conn_id

    @task(task_id="summary", trigger_rule="all_done", retries=0)
    def summary(**context: Any) -> dict[str, Any]:
        import json

        from airflow.sdk.exceptions import AirflowFailException

        from airflow_mlops.core.segments import batch_summary, chunk_count
        from airflow_mlops.hooks.storage import StorageHook
        from airflow_mlops.operators.base import MlopsBaseOperator

        ti = context["ti"]
        storage = StorageHook(aws_conn_id=aws_conn_id).get_storage()
        chunks = ti.xcom_pull(task_ids=f"{prefix}segment_batch", key="return_value") or []
        chunks = [c for c in ([chunks] if isinstance(chunks, dict) else chunks) if c]
        done = {c.get("chunk") for c in chunks if isinstance(c, dict)}
        count = chunk_count(expected, batch_size)
        missing = [i for i in range(count) if i not in done]  # died before reporting
        records: list[dict[str, Any]] = []
        for index in range(count):
            # Where the chunk writes, not a path from XCom; a chunk killed mid-way left the
            # records of the segments it finished.
            uri = _chunk_results_uri(context, f"{prefix}segment_batch", index)
            if storage.exists(uri):
                records.extend(json.loads(storage.read_text(uri)))
        result = batch_summary(records, expected, missing)
        uri = MlopsBaseOperator.default_report_uri_for(context, "segments_summary.json")
        storage.write_text(uri, json.dumps({**result, "records": records}))
        result["summary_uri"] = uri
        failed = [r for r in records if r["failed"]]
        print(f"segments: {result['reason']}; every segment's record: {uri}")
        for record in failed:
            print(f"  FAILED {record['segment']} ({record['model_name']}): {record['reason']}")
        if result["outcome"] != "ok":
            names = ", ".join(r["segment"] for r in failed[:50])
            if config.notifications.events:  # one `failed` message for the run, not per segment
                run = {
                    "model_name": config.registered_model_name,
                    "outcome": "failed",
                    "reason": result["reason"] + (f"; failed segments: {names}" if names else ""),
                    "champion_version": None,
                    "challenger_version": None,
                    "steps": [],
                }
                result["notifications"] = _notify_ct_run(config, context, run, {})
            ti.xcom_push(key="return_value", value=result)  # stays inspectable
            more = f" (+{len(failed) - 50} more in {uri})" if len(failed) > 50 else ""
            raise AirflowFailException(
                result["reason"] + (f"; failed segments: {names}{more}" if names else "")
            )
        return result

    return summary()


def _chunk_results_uri(context: dict[str, Any], task_id: str, index: int) -> str:
    """Where chunk ``index`` of ``task_id`` writes its results (its default report URI)."""
    from airflow_mlops.core.storage import join_uri
    from airflow_mlops.operators.base import default_artifacts_root, path_safe

    ti = context["ti"]
    return join_uri(
        default_artifacts_root(),
        path_safe(ti.dag_id),
        path_safe(ti.run_id),
        path_safe(task_id),
        str(index),
        "segment_results.json",
    )
