"""One model per segment: split the data, then run the CT chain per segment as a mapped group.

Each segment is a map index of one TaskGroup, so a failing segment fails only its own chain;
the others validate, train, evaluate and promote their own ``<model>__<segment>`` champion.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import task, task_group

from airflow_mlops.factories.chain import single_model_chain, summary_task, train_uri_field
from airflow_mlops.factories.config import PipelineConfig
from airflow_mlops.operators.base import DAG_ARTIFACTS_PREFIX

__all__ = ["segmented_ct_tasks"]


def segmented_ct_tasks(config: PipelineConfig, prefix: str) -> None:
    assert config.segments is not None
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
