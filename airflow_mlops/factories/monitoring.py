"""Build the monitoring DAG: drift (and decay) checks that emit the model's retrain signal."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Param, TaskGroup

from airflow_mlops.factories.config import PipelineConfig, load_config


def _as_config(config: PipelineConfig | str | Path) -> PipelineConfig:
    return config if isinstance(config, PipelineConfig) else load_config(config)


def monitoring_params(config: PipelineConfig) -> dict[str, Param]:
    current = config.monitoring.current_uri or config.data.inference_uri or ""
    return {
        "current_uri": Param(current, type="string", description="New data to check for drift."),
    }


def monitoring_group(
    config: PipelineConfig | str | Path, group_id: str = "monitoring"
) -> TaskGroup:
    """The monitoring steps as a TaskGroup (inside a DAG whose params include ``current_uri``)."""
    config = _as_config(config)
    with TaskGroup(group_id=group_id) as group:
        _monitoring_tasks(config)
    return group


def monitoring_dag(config: PipelineConfig | str | Path, **dag_kwargs: Any) -> DAG:
    """Drift on new data (and decay when labels arrive) → the retrain Asset of the CT DAG."""
    config = _as_config(config)
    kwargs: dict[str, Any] = {
        "dag_id": config.monitoring_dag_id,
        "description": f"Drift and decay monitoring of {config.registered_model_name}",
        "schedule": config.monitoring.schedule,
        "start_date": dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
        "catchup": False,
        "max_active_runs": 1,
        "default_args": {"owner": config.owner, "retries": config.retries},
        "params": monitoring_params(config),
        "tags": ["mlops", "monitoring", *config.tags],
    }
    kwargs.update(dag_kwargs)
    with DAG(**kwargs) as dag:
        _monitoring_tasks(config)
    return dag


def _monitoring_tasks(config: PipelineConfig) -> None:
    from airflow_mlops.operators.drift import DriftReportOperator
    from airflow_mlops.operators.performance import ModelPerformanceOperator

    monitoring = config.monitoring
    conns = config.connections.model_dump()
    model = config.registered_model_name
    DriftReportOperator(
        task_id="drift",
        model_name=model,
        current_uri="{{ params.current_uri }}",
        reference_uri=monitoring.reference_uri,
        columns=monitoring.columns,
        column_methods=monitoring.column_methods or None,
        column_thresholds=monitoring.column_thresholds or None,
        drift_share=monitoring.drift_share,
        sample_rows=monitoring.sample_rows,
        debounce_seconds=int(monitoring.debounce_hours * 3600),
        ct_dag_id=config.ct_dag_id,
        on_drift="emit",
        allowed_data_prefixes=config.allowed_data_prefixes,
        **conns,
    )
    if monitoring.decay:
        from airflow_mlops.core.prediction_layout import is_partitioned_output

        predictions = config.data.predictions_uri
        delayed = bool(config.data.id_columns and predictions)
        delayed = delayed and is_partitioned_output(str(predictions))
        ModelPerformanceOperator(
            task_id="decay",
            model_name=model,
            labels_uri=monitoring.decay.labels_uri,
            predictions_uri=predictions if delayed else None,
            id_columns=config.data.id_columns if delayed else None,
            min_label_coverage=monitoring.decay.min_label_coverage,
            tolerance=monitoring.decay.tolerance,
            metric=monitoring.decay.metric,
            debounce_seconds=int(monitoring.debounce_hours * 3600),
            ct_dag_id=config.ct_dag_id,
            allowed_data_prefixes=config.allowed_data_prefixes,
            **conns,
        )
