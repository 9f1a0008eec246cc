"""Build the continuous-training DAG (or TaskGroup) and the monitoring DAG from a config.

Construction does no I/O and imports no ML library: Airflow re-parses DAG files every 30 s.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Param, TaskGroup

from airflow_mlops.assets import retrain_asset
from airflow_mlops.factories.chain import (
    new_data_asset,
    single_model_chain,
    summary_task,
    train_uri_field,
)
from airflow_mlops.factories.config import PipelineConfig, load_config

__all__ = [
    "continuous_training_dag",
    "continuous_training_group",
    "ct_params",
]


def _as_config(config: PipelineConfig | str | Path) -> PipelineConfig:
    return config if isinstance(config, PipelineConfig) else load_config(config)


def _default_args(config: PipelineConfig) -> dict[str, Any]:
    return {
        "owner": config.owner,
        "retries": config.retries,
        "retry_delay": dt.timedelta(seconds=30),
    }


def _ct_schedule(config: PipelineConfig) -> Any:
    """Cron (if any) OR retrain signal OR new data: the Level-1 triggers."""
    from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable

    assets = retrain_asset(config.registered_model_name)
    if config.segments is not None:
        from airflow_mlops.core.segments import segment_models

        # Monitoring signals each segment model on its own Asset (its own debounce).
        for _, model in segment_models(config.registered_model_name, config.segments.values):
            assets = assets | retrain_asset(model)
    new_data = new_data_asset(config)
    if new_data is not None:
        assets = assets | new_data
    if config.schedule:
        return AssetOrTimeSchedule(
            timetable=CronTriggerTimetable(config.schedule, timezone="UTC"), assets=assets
        )
    return assets


def continuous_training_group(
    config: PipelineConfig | str | Path, group_id: str = "continuous_training"
) -> TaskGroup:
    """The CT steps as a TaskGroup, for users who compose their own DAG.

    Must be called inside a ``with DAG(...)`` block whose params include ``train_uri`` (see
    :func:`ct_params`).
    """
    config = _as_config(config)
    with TaskGroup(group_id=group_id) as group:
        _ct_tasks(config, prefix=f"{group_id}.")
    return group


def ct_params(config: PipelineConfig) -> dict[str, Param]:
    return {
        "train_uri": Param(
            config.data.train_uri, type="string", description="Training data URI for this run."
        ),
    }


def continuous_training_dag(config: PipelineConfig | str | Path, **dag_kwargs: Any) -> DAG:
    """The CT DAG: detect changes → validate → train → evaluate → register → (approve) → promote
    → (batch predict) → summary. Scheduled by cron and/or the retrain and new-data Assets.
    """
    config = _as_config(config)
    kwargs: dict[str, Any] = {
        "dag_id": config.ct_dag_id,
        "description": config.description
        or f"Continuous training of {config.registered_model_name}",
        "schedule": _ct_schedule(config),
        "start_date": dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
        "catchup": False,
        "max_active_runs": _max_active_runs(config),
        "default_args": _default_args(config),
        "params": ct_params(config),
        "tags": ["mlops", "continuous-training", *config.tags],
        "doc_md": _doc(config),
    }
    if config.notifications.stale_after is not None:
        from airflow_mlops.factories.staleness import ct_run_deadline

        # A CT run still unfinished after stale_after leaves the champion stale too.
        kwargs["deadline"] = ct_run_deadline(config, config.notifications.stale_after)
    kwargs.update(dag_kwargs)
    with DAG(**kwargs) as dag:
        _ct_tasks(config, prefix="")
    return dag


def _max_active_runs(config: PipelineConfig) -> int:
    """One run at a time, except that a run waiting for a human must not hold up the next.

    With an approval that may ask a human (``manual``, ``auto_if_confident``) a second run may train, evaluate and register while the first
    waits: if its challenger qualifies it supersedes the waiting request (which then ends),
    so one waiting run plus one working run is the steady state. Promotions stay safe
    without serialising runs: the promote step moves ``@champion`` under the promotion lock
    with a compare-and-set (re-evaluating against a champion that moved), and a superseded
    version never promotes.
    """
    return 2 if config.promotion.approval in ("manual", "auto_if_confident") else 1


def _ct_tasks(config: PipelineConfig, prefix: str) -> None:
    if config.segments:
        from airflow_mlops.factories.segments import segmented_ct_tasks

        segmented_ct_tasks(config, prefix)
        return
    model = config.registered_model_name
    conns = config.connections.model_dump()
    last = single_model_chain(config, model, train_uri_field(config), conns)
    last >> summary_task(config, prefix, model=model)


def _doc(config: PipelineConfig) -> str:
    return (
        f"### Continuous training: `{config.registered_model_name}`\n\n"
        f"Generated by airflow-mlops from pipeline `{config.name}`. Triggers: "
        f"{config.schedule or 'no cron'}, the retrain signal of the monitoring DAG"
        f"{', new data at ' + config.data.new_data_uri if config.data.new_data_uri else ''}, "
        "or a manual run (override `train_uri` in the trigger form).\n"
    )
